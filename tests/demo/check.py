"""Checks of the demo stack that need no Docker.

- docker-compose.yml against the Compose Specification's JSON schema (the copy vendored
  by check-jsonschema, pinned in requirements.txt, from github.com/compose-spec/compose-spec);
- envoy/envoy.yaml against Envoy's own API protos (PyPI xds-protos, generated from
  envoyproxy/data-plane-api): parsed as envoy.config.bootstrap.v3.Bootstrap with unknown
  fields refused and every typed_config resolved, and no deprecated field, enum value or
  message (tests/demo/envoy_api.py, which first proves it refuses each of those);
- the consul_enricher configurations inside kong/kong.yml and envoy/envoy.yaml against
  the filter's Kong schema kong/consul_enricher.meta.json (JSON Schema draft 4), Kong's
  with the schema's patterns run as Kong runs them (PCRE2);
- the schema's patterns under Kong's regex engine: each compiles under PCRE2, PCRE2, Python's
  re and ECMA-262 (regress) agree on a few probe strings, and tests/config-examples.json's
  configurations are accepted or refused as the Rust tests expect;
- that the three files agree with each other (mounts, DNS, shm_kv zone, clusters,
  instance addresses);
- the Kong companion plugin's unit test (LuaJIT with lua-cjson, as in Kong);
- the documentation (README.md and docs/*.md): every relative link leads to a file that
  exists and every `#anchor` to a heading there (GitHub's slugs), every docs page says first
  whom it is for, and the configuration reference's table (docs/configuration.md) lists the
  keys of kong/consul_enricher.meta.json, no more and no fewer (tests/config_schema.rs ties
  that schema to the filter's structs);
- the web page: `npm ci` without a warning (engines included), one version of each
  @opentelemetry package, `npm run build` and its unit test.

Prints one line per check and exits non-zero if any failed.
Usage: python tests/demo/check.py [--skip-web]
"""

import argparse
import ctypes
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import re

import envoy_api
import jsonschema
import regress
from jsonschema.exceptions import ValidationError
from ruamel.yaml import YAML, YAMLError

ROOT = Path(__file__).resolve().parents[2]
FILTER_NAME = "consul_enricher"
WASM_FILE = f"{FILTER_NAME}.wasm"
COMPANION_PLUGIN = "consul-enricher-span"
FILTER_STATE_PREFIX = "wasm.consul_enricher."


class Report:
    def __init__(self):
        self.failures = 0

    def check(self, name, ok, detail=""):
        if ok:
            print(f"ok   {name}")
        else:
            self.failures += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok

    def schema(self, name, validator, instance):
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        detail = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
        return self.check(name, not errors, detail)


def load_yaml(path):
    # The safe loader: plain data, YAML merge keys (`<<`) resolved like Docker Compose does.
    return YAML(typ="safe", pure=True).load(path.read_text())


def schema_default(schema, dotted_key):
    node = schema
    for part in dotted_key.split("."):
        node = node["properties"][part]
    return node["default"]


def config_value(config, schema, dotted_key):
    """The value of a filter config key, or its default from the schema."""
    node = config
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return schema_default(schema, dotted_key)
        node = node[part]
    return node


# ---------------------------------------------------------------- extraction


def kong_filter_configs(kong):
    """(location, config) of every consul_enricher filter in a Kong declarative config."""
    found = []
    for service in kong.get("services") or []:
        for chain_index, chain in enumerate(service.get("filter_chains") or []):
            for filter_index, entry in enumerate(chain.get("filters") or []):
                if entry.get("name") == FILTER_NAME:
                    where = f"services[{service.get('name')}].filter_chains[{chain_index}].filters[{filter_index}].config"
                    found.append((where, entry.get("config")))
    return found


def envoy_wasm_filters(envoy):
    """(location, hcm, wasm PluginConfig) for every envoy.filters.http.wasm filter."""
    found = []
    for listener in envoy["static_resources"]["listeners"]:
        for chain_index, chain in enumerate(listener["filter_chains"]):
            for network_filter in chain["filters"]:
                hcm = network_filter.get("typed_config", {})
                for http_filter in hcm.get("http_filters", []):
                    if http_filter["name"] == "envoy.filters.http.wasm":
                        where = (
                            f"static_resources.listeners[{listener['name']}].filter_chains[{chain_index}]"
                            f".filters[{network_filter['name']}].typed_config.http_filters[envoy.filters.http.wasm]"
                            ".typed_config.config"
                        )
                        found.append((where, hcm, http_filter["typed_config"]["config"]))
    return found


# ---------------------------------------------------------------- checks


def check_compose(report, compose):
    spec = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(spec.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    report.schema("docker-compose.yml is valid against the Compose Specification schema", validator, compose)


def mount_target(service, source):
    for volume in service.get("volumes", []):
        host, _, rest = volume.partition(":")
        if host == source:
            return rest.split(":")[0]
    return None


# The companion's default nginx_variable (kong/plugins/consul-enricher-span/schema.lua).
COMPANION_DEFAULT_VARIABLE = "consul_enricher"


def check_nginx_variable(report, kong, env, variable):
    """The variable the filter writes is declared for Kong's proxy server block
    (`nginx_proxy_set`, kong/templates/nginx_kong.lua) and is the one the companion reads."""
    if not variable:
        report.check("kong/kong.yml's filter writes an nginx variable for the companion", False, "nginx_variable is empty")
        return
    # Compose turns "$$" into "$".
    declared = env.get("KONG_NGINX_PROXY_SET", "").replace("$$", "$").split()
    report.check(
        f"Kong declares ${variable} (KONG_NGINX_PROXY_SET)",
        declared[:1] == [f"${variable}"] and len(declared) == 2,
        f"KONG_NGINX_PROXY_SET={env.get('KONG_NGINX_PROXY_SET')!r}",
    )
    companion = next((p for p in kong.get("plugins") or [] if p.get("name") == COMPANION_PLUGIN), {})
    read = (companion.get("config") or {}).get("nginx_variable", COMPANION_DEFAULT_VARIABLE)
    report.check(f"{COMPANION_PLUGIN} reads ${variable}", read == variable, f"it reads ${read}")


def check_kong(report, compose, kong, config_schema, kong_validator):
    validator = kong_validator(config_schema)
    configs = kong_filter_configs(kong)
    if not report.check("kong/kong.yml has one consul_enricher filter", len(configs) == 1, f"found {len(configs)}"):
        return
    where, config = configs[0]
    report.check(f"kong/kong.yml {where} is a JSON object", isinstance(config, dict), type(config).__name__)
    report.schema(f"kong/kong.yml {where} is valid against consul_enricher.meta.json (PCRE2 patterns)", validator, config)
    report.check("kong/kong.yml filter config has host \"kong\"", config_value(config, config_schema, "host") == "kong")

    plugins = [plugin["name"] for plugin in kong.get("plugins") or []]
    report.check(
        f"kong/kong.yml runs {COMPANION_PLUGIN} and opentelemetry",
        COMPANION_PLUGIN in plugins and "opentelemetry" in plugins,
        f"plugins: {plugins}",
    )

    service = compose["services"]["kong"]
    env = service["environment"]
    namespace = config_value(config, config_schema, "cache.shm_namespace")
    zone_variable = "KONG_NGINX_WASM_SHM_KV_" + namespace.upper()
    report.check(f"Kong has the shm_kv zone of cache.shm_namespace ({zone_variable})", zone_variable in env)
    report.check("Kong has Wasm on", env.get("KONG_WASM") == "on", f"KONG_WASM={env.get('KONG_WASM')!r}")
    report.check(
        "Kong's KONG_WASM_FILTERS_PATH is ./dist mounted",
        mount_target(service, "./dist") == env.get("KONG_WASM_FILTERS_PATH"),
        f"{mount_target(service, './dist')} vs {env.get('KONG_WASM_FILTERS_PATH')}",
    )
    report.check(
        "Kong's KONG_DECLARATIVE_CONFIG is ./kong/kong.yml mounted",
        mount_target(service, "./kong/kong.yml") == env.get("KONG_DECLARATIVE_CONFIG"),
    )
    package_root = env.get("KONG_LUA_PACKAGE_PATH", "").split("?")[0].rstrip("/")
    report.check(
        "Kong's KONG_LUA_PACKAGE_PATH finds kong.plugins.consul-enricher-span in ./kong/plugins",
        mount_target(service, "./kong/plugins") == f"{package_root}/kong/plugins",
        f"package path root {package_root!r}, mount {mount_target(service, './kong/plugins')!r}",
    )
    report.check(
        f"Kong loads the {COMPANION_PLUGIN} plugin",
        COMPANION_PLUGIN in env.get("KONG_PLUGINS", "").split(","),
    )
    check_nginx_variable(report, kong, env, config_value(config, config_schema, "nginx_variable"))
    consul_ip = compose["services"]["consul"]["networks"]["demo"]["ipv4_address"]
    report.check(
        "Kong's DNS resolver is Consul's DNS",
        env.get("KONG_DNS_RESOLVER") == f"{consul_ip}:8600",
        f"{env.get('KONG_DNS_RESOLVER')} vs {consul_ip}:8600",
    )
    report.check("Kong's DNS order allows SRV", "SRV" in env.get("KONG_DNS_ORDER", "").split(","))


# ---------------------------------------------------------------- Kong's regex engine


class Pcre2:
    """Kong's regex engine. Kong validates a filter's configuration with lua-resty-ljsonschema,
    whose `pattern` runs ngx.re.find(subject, pattern, "jo"): PCRE2 in Kong 3.9. "j" asks for
    the JIT and "o" compiles a pattern once; neither changes the syntax, and without "u" the
    subject is matched as bytes, not in UTF mode: no compile options."""

    LIBRARY = "libpcre2-8.so.0"
    JIT_COMPLETE = 1

    def __init__(self):
        lib = ctypes.CDLL(self.LIBRARY)
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.pcre2_compile_8.restype = ctypes.c_void_p
        lib.pcre2_compile_8.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int), size_p, ctypes.c_void_p
        ]
        lib.pcre2_jit_compile_8.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.pcre2_match_data_create_from_pattern_8.restype = ctypes.c_void_p
        lib.pcre2_match_data_create_from_pattern_8.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pcre2_match_data_free_8.argtypes = [ctypes.c_void_p]
        lib.pcre2_match_8.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p
        ]
        lib.pcre2_get_error_message_8.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        self.lib = lib
        self.compiled = {}

    def compile(self, pattern):
        """(the compiled pattern, None) or (None, PCRE2's error), compiled once like "o"."""
        if pattern not in self.compiled:
            text = pattern.encode()
            error, offset = ctypes.c_int(), ctypes.c_size_t()
            code = self.lib.pcre2_compile_8(text, len(text), 0, ctypes.byref(error), ctypes.byref(offset), None)
            if code:
                # "j": where the JIT is missing, ngx.re runs the interpreter, as here.
                self.lib.pcre2_jit_compile_8(code, self.JIT_COMPLETE)
                self.compiled[pattern] = (code, None)
            else:
                message = ctypes.create_string_buffer(256)
                self.lib.pcre2_get_error_message_8(error.value, message, len(message))
                self.compiled[pattern] = (None, f"{message.value.decode()} (at offset {offset.value})")
        return self.compiled[pattern]

    def search(self, code, subject):
        """Whether `subject` (bytes) matches; a match error counts as no match, as
        ngx.re.find's nil does in ljsonschema."""
        match_data = self.lib.pcre2_match_data_create_from_pattern_8(code, None)
        try:
            return self.lib.pcre2_match_8(code, subject, len(subject), 0, 0, match_data, None) >= 0
        finally:
            self.lib.pcre2_match_data_free_8(match_data)


def kong_validator_class(pcre2):
    """Draft 4, as Kong's: the schema's `pattern` run by PCRE2 on the string's UTF-8 bytes."""

    def pattern(validator, pattern, instance, schema):
        if not validator.is_type(instance, "string"):
            return
        code, error = pcre2.compile(pattern)
        if error:
            yield ValidationError(f"pattern {pattern!r} does not compile under PCRE2: {error}")
        elif not pcre2.search(code, instance.encode()):
            yield ValidationError(f"{instance!r} does not match {pattern!r} under PCRE2")

    return jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": pattern})


def schema_patterns(schema, path=""):
    """(dotted key, pattern) of every `pattern` in a schema; an array's items are `key[]`."""
    if "pattern" in schema:
        yield path, schema["pattern"]
    for key, member in schema.get("properties", {}).items():
        yield from schema_patterns(member, f"{path}.{key}" if path else key)
    if "items" in schema:
        yield from schema_patterns(schema["items"], f"{path}[]")


# Where engines part: control characters, a final newline (PCRE2's and re's `$` also match
# before one, ECMA-262's does not), a byte that is not ASCII.
PATTERN_PROBES = ["echo", "", "a b", "a\tb", "a\nb", "a\n", "\x7f", "\x00", "é", "Zürich"]


def check_kong_patterns(report, config_schema, kong_validator, pcre2, examples):
    patterns = list(schema_patterns(config_schema))
    broken = []
    parted = []
    for key, pattern in patterns:
        code, error = pcre2.compile(pattern)
        if error:
            broken.append(f"{key}: pattern {pattern!r}: {error}")
            continue
        ecma = regress.Regex(pattern, flags="u")
        for probe in PATTERN_PROBES:
            answers = (pcre2.search(code, probe.encode()), bool(re.search(pattern, probe)), ecma.find(probe) is not None)
            if len(set(answers)) > 1:
                parted.append(f"{key} {pattern!r} on {probe!r}: PCRE2 {answers[0]}, re {answers[1]}, ECMA-262 {answers[2]}")
    report.check(
        f"the {len(patterns)} patterns of consul_enricher.meta.json compile under PCRE2 (Kong's ngx.re)",
        not broken,
        "; ".join(broken),
    )
    report.check(
        "PCRE2, Python's re and ECMA-262 agree on the patterns of consul_enricher.meta.json",
        not parted,
        "; ".join(parted),
    )

    validator = kong_validator(config_schema)
    # Cross-key rules are the parser's alone: the schema accepts those configurations.
    accepted = examples["valid"] + [case["config"] for case in examples["invalid_by_parser_only"]]
    refused = []
    for config in accepted:
        for error in validator.iter_errors(config):
            where = "/".join(map(str, error.absolute_path)) or "(root)"
            refused.append(f"{json.dumps(config)}: {where}: {error.message}")
    report.check(
        f"Kong's schema (PCRE2 patterns) accepts the {len(accepted)} configurations tests/config-examples.json says it does",
        not refused,
        "; ".join(refused),
    )
    passed = [json.dumps(case["config"]) for case in examples["invalid"] if validator.is_valid(case["config"])]
    report.check(
        f"Kong's schema (PCRE2 patterns) refuses the {len(examples['invalid'])} invalid configurations of tests/config-examples.json",
        not passed,
        "accepted: " + "; ".join(passed),
    )


def check_envoy(report, compose, envoy, config_schema):
    validator = jsonschema.Draft4Validator(config_schema)
    filters = envoy_wasm_filters(envoy)
    if not report.check("envoy/envoy.yaml has one Wasm filter", len(filters) == 1, f"found {len(filters)}"):
        return
    where, hcm, plugin = filters[0]
    raw = plugin["configuration"]["value"]
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        report.check(f"envoy/envoy.yaml {where}.configuration.value is JSON", False, str(error))
        return
    report.schema(f"envoy/envoy.yaml {where}.configuration.value is valid against consul_enricher.meta.json", validator, config)
    report.check("envoy/envoy.yaml filter config has host \"envoy\"", config_value(config, config_schema, "host") == "envoy")

    vm = plugin["vm_config"]
    report.check("Envoy runs the filter on V8", vm.get("runtime") == "envoy.wasm.runtime.v8", vm.get("runtime"))
    filename = PurePosixPath(vm["code"]["local"]["filename"])
    service = compose["services"]["envoy"]
    report.check(
        f"Envoy loads {WASM_FILE} from ./dist mounted",
        filename.name == WASM_FILE and mount_target(service, "./dist") == str(filename.parent),
        f"{filename} vs mount {mount_target(service, './dist')}",
    )
    report.check("Envoy's config file is ./envoy/envoy.yaml mounted", mount_target(service, "./envoy/envoy.yaml") is not None)

    clusters = {cluster["name"] for cluster in envoy["static_resources"]["clusters"]}
    wanted = {"consul.upstream": config_value(config, config_schema, "consul.upstream")}
    if config_value(config, config_schema, "spans.enabled"):
        wanted["spans.upstream"] = config_value(config, config_schema, "spans.upstream")
    for key, cluster in wanted.items():
        report.check(f"Envoy has the cluster of {key} ({cluster})", cluster in clusters, f"clusters: {sorted(clusters)}")
    # Envoy's tracer exports OTLP/HTTP (the receiver of the filter's own spans takes it).
    tracer = hcm["tracing"]["provider"]["typed_config"]["http_service"]["http_uri"]["cluster"]
    report.check(f"Envoy has the tracer's cluster ({tracer})", tracer in clusters)
    routes = [
        route["route"]["cluster"]
        for virtual_host in hcm["route_config"]["virtual_hosts"]
        for route in virtual_host["routes"]
    ]
    report.check("Envoy's routes go to defined clusters", all(c in clusters for c in routes), f"routes: {routes}")

    custom_tags = hcm["tracing"]["custom_tags"]
    prefix = config_value(config, config_schema, "headers.prefix")
    headers = [tag["request_header"]["name"] for tag in custom_tags if "request_header" in tag]
    report.check(
        f"Envoy's custom_tags read the filter's headers (prefix {prefix})",
        headers and all(header.startswith(prefix) for header in headers),
        f"headers: {headers}",
    )
    # The filter stores the serving instance's attribute <name> with proxy_set_property at
    # the one-segment path consul_enricher.<name>; Envoy keeps it as the filter state
    # wasm.consul_enricher.<name> (source/extensions/common/wasm/context.cc, setProperty).
    state_tags = [tag for tag in custom_tags if "value" in tag]
    wrong = [
        tag["tag"]
        for tag in state_tags
        if tag["value"] != f"%FILTER_STATE({FILTER_STATE_PREFIX}{tag['tag']}:PLAIN)%"
    ]
    report.check(
        f"Envoy's value custom_tags read the filter state {FILTER_STATE_PREFIX}<tag> as PLAIN",
        state_tags and not wrong,
        f"not so: {wrong}" if state_tags else "no custom tag with value",
    )
    image = service.get("image", "")
    match = re.search(r":v(\d+)\.(\d+)", image)
    version = (int(match.group(1)), int(match.group(2))) if match else None
    report.check(
        f"Envoy's image {image} is 1.37 or later (custom tags with value)",
        not state_tags or (version is not None and version >= (1, 37)),
        f"version {version}",
    )


def check_instances(report, compose, envoy):
    echo = {
        name: service
        for name, service in compose["services"].items()
        if service.get("environment", {}).get("SERVICE_NAME") == "echo"
    }
    report.check("docker-compose.yml runs two echo instances", len(echo) == 2, f"found {sorted(echo)}")
    for name, service in sorted(echo.items()):
        env = service["environment"]
        ip = service["networks"]["demo"]["ipv4_address"]
        report.check(
            f"{name} registers the address it has (SERVICE_ADDRESS {env.get('SERVICE_ADDRESS')})",
            env.get("SERVICE_ADDRESS") == ip,
            f"ipv4_address {ip}",
        )
    versions = {service["environment"].get("SERVICE_VERSION") for service in echo.values()}
    regions = {service["environment"].get("SERVICE_REGION") for service in echo.values()}
    report.check("the echo instances differ in version and region", len(versions) == 2 and len(regions) == 2)
    echo_cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "echo")
    endpoints = {
        endpoint["endpoint"]["address"]["socket_address"]["address"]
        for group in echo_cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    }
    report.check("Envoy's echo cluster lists the echo instances", endpoints == set(echo), f"{sorted(endpoints)}")


# ---------------------------------------------------------------- documentation

CONFIG_REFERENCE = "docs/configuration.md"
CONFIG_TABLE_HEADER = "| Key | Default | Accepted | Meaning |"
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def documentation_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def prose_lines(text):
    """(line number, line) of the lines outside fenced code blocks."""
    fenced = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fenced is None:
                fenced = match.group(1)
            elif match.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield number, line


def heading_text(markdown):
    """The text GitHub renders for a heading's markdown: code spans, links and emphasis
    reduced to their text."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), markdown)
    text = INLINE_LINK.sub(lambda m: m.group(1), text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)


def github_slug(text):
    """GitHub's anchor of a heading: lower case, every character but letters, digits, `-`,
    `_` and spaces dropped, each space a `-`."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text):
    """Every heading's anchor in a markdown text; a repeated one gets -1, -2, ..."""
    seen = {}
    found = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(heading_text(match.group(2)))
        if slug in seen:
            while True:
                seen[slug] += 1
                candidate = f"{slug}-{seen[slug]}"
                if candidate not in seen:
                    break
            slug = candidate
        seen[slug] = 0
        found.add(slug)
    return found


def links(text):
    """(line number, target) of every inline and reference link outside code."""
    for number, line in prose_lines(text):
        line = CODE_SPAN.sub("", line)
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(2)
        match = REFERENCE_LINK.match(line)
        if match:
            yield number, match.group(1)


def check_links(report, files):
    anchor_cache = {}

    def anchors_of(path):
        if path not in anchor_cache:
            anchor_cache[path] = anchors(path.read_text())
        return anchor_cache[path]

    broken = []
    count = 0
    for source in files:
        for number, target in links(source.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a URL (https:, mailto:): not this repository's
            count += 1
            where = f"{source.relative_to(ROOT)}:{number}: {target}"
            path, _, anchor = target.partition("#")
            resolved = (source.parent / path).resolve() if path else source
            if not resolved.exists():
                broken.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
                broken.append(f"{where}: no heading #{anchor} in {os.path.relpath(resolved, ROOT)}")
    report.check(f"the {count} links and anchors in README.md and the {len(files) - 1} docs pages lead somewhere", not broken, "; ".join(broken))


def check_audience(report, files):
    """Every docs page says first whom it is for: the first line after its title."""
    wrong = []
    for path in files:
        if path.parent != ROOT / "docs":
            continue
        lines = [line for _, line in prose_lines(path.read_text()) if line.strip()]
        if len(lines) < 2 or not lines[0].startswith("# ") or not lines[1].startswith("For "):
            wrong.append(str(path.relative_to(ROOT)))
    report.check("every docs page starts by saying whom it is for (\"For ...\")", not wrong, "not so: " + ", ".join(wrong))


def reference_keys(text):
    """The first column of the configuration reference's table of keys."""
    lines = text.splitlines()
    start = lines.index(CONFIG_TABLE_HEADER) + 2
    keys = []
    for row in lines[start:]:
        if not row.startswith("|"):
            break
        cell = row.strip("|").split("|")[0].strip()
        keys.append(cell.strip("`"))
    return keys


def schema_keys(schema, prefix=""):
    """The dotted key of every leaf of a configuration schema (arrays are leaves)."""
    if "properties" not in schema:
        return [prefix]
    keys = []
    for key, member in schema["properties"].items():
        keys += schema_keys(member, f"{prefix}.{key}" if prefix else key)
    return keys


def check_config_reference(report, config_schema):
    try:
        documented = reference_keys((ROOT / CONFIG_REFERENCE).read_text())
    except (OSError, ValueError) as error:
        report.check(f"{CONFIG_REFERENCE} has the table of keys ({CONFIG_TABLE_HEADER})", False, str(error))
        return
    schema = schema_keys(config_schema)
    repeated = sorted({key for key in documented if documented.count(key) > 1})
    missing = sorted(set(schema) - set(documented))
    extra = sorted(set(documented) - set(schema))
    detail = "; ".join(
        part
        for part in (
            f"not in {CONFIG_REFERENCE}: {', '.join(missing)}" if missing else "",
            f"not in consul_enricher.meta.json: {', '.join(extra)}" if extra else "",
            f"listed twice: {', '.join(repeated)}" if repeated else "",
        )
        if part
    )
    report.check(
        f"{CONFIG_REFERENCE} lists the {len(schema)} configuration keys of consul_enricher.meta.json",
        not (missing or extra or repeated),
        detail,
    )


def check_documentation(report, config_schema):
    files = documentation_files()
    check_links(report, files)
    check_audience(report, files)
    check_config_reference(report, config_schema)


def run(report, name, command, cwd):
    print(f"---- {name}: {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=cwd)
    return report.check(name, result.returncode == 0, f"exit status {result.returncode}")


def check_companion(report):
    run(report, "Kong companion plugin unit test (LuaJIT)", ["luajit", "tests/demo/companion_test.lua"], ROOT)


def opentelemetry_copies(node_modules):
    """{package: {versions}} of every @opentelemetry package installed, nested copies too."""
    copies = {}
    for manifest in node_modules.glob("**/node_modules/@opentelemetry/*/package.json"):
        data = json.loads(manifest.read_text())
        copies.setdefault(data["name"], set()).add(data["version"])
    for manifest in node_modules.glob("@opentelemetry/*/package.json"):
        data = json.loads(manifest.read_text())
        copies.setdefault(data["name"], set()).add(data["version"])
    return copies


def check_web(report):
    web = ROOT / "web"
    print("---- web: npm ci --no-audit --no-fund", flush=True)
    installed = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=web, capture_output=True, text=True
    )
    sys.stdout.write(installed.stdout)
    sys.stderr.write(installed.stderr)
    report.check("web: npm ci", installed.returncode == 0, f"exit status {installed.returncode}")
    warnings = [line for line in (installed.stdout + installed.stderr).splitlines() if line.startswith("npm warn")]
    report.check("web: npm ci warns of nothing (engines included)", not warnings, "; ".join(warnings[:3]))
    if installed.returncode != 0:
        return
    duplicated = {
        name: sorted(versions) for name, versions in opentelemetry_copies(web / "node_modules").items() if len(versions) > 1
    }
    report.check("web: one version of each OpenTelemetry package", not duplicated, f"{duplicated}")
    if run(report, "web: npm run build", ["npm", "run", "build"], web):
        bundle = web / "dist" / "app.js"
        report.check("web/dist/app.js is built", bundle.is_file() and bundle.stat().st_size > 0)
        html = (web / "dist" / "index.html").read_text()
        report.check("web/dist/index.html loads app.js", 'src="app.js"' in html)
    run(report, "web: unit test of the run-time settings", ["node", "--test", "tests/demo/web_config.test.mjs"], ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-web", action="store_true", help="skip npm ci, the bundle and its test")
    args = parser.parse_args()
    os.chdir(ROOT)

    report = Report()
    try:
        compose = load_yaml(ROOT / "docker-compose.yml")
        kong = load_yaml(ROOT / "kong" / "kong.yml")
        envoy = load_yaml(ROOT / "envoy" / "envoy.yaml")
        config_schema = json.loads((ROOT / "kong" / "consul_enricher.meta.json").read_text())["config_schema"]
        examples = json.loads((ROOT / "tests" / "config-examples.json").read_text())
    except (OSError, ValueError, KeyError, YAMLError) as error:
        report.check("the demo files can be read", False, f"{type(error).__name__}: {error}")
        return 1
    try:
        pcre2 = Pcre2()
    except (OSError, AttributeError) as error:
        report.check(f"Kong's regex engine PCRE2 ({Pcre2.LIBRARY}) loads", False, str(error))
        return 1
    kong_validator = kong_validator_class(pcre2)

    check_compose(report, compose)
    envoy_api.self_test(report)
    envoy_api.check(report, envoy)
    check_kong(report, compose, kong, config_schema, kong_validator)
    check_kong_patterns(report, config_schema, kong_validator, pcre2, examples)
    check_envoy(report, compose, envoy, config_schema)
    check_instances(report, compose, envoy)
    check_companion(report)
    check_documentation(report, config_schema)
    if not args.skip_web:
        check_web(report)

    print(f"demo checks: {report.failures} failed" if report.failures else "demo checks: all passed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
