"""envoy/envoy.yaml checked against Envoy's own API definitions.

The message classes come from the PyPI package xds-protos, which is generated from
envoyproxy/data-plane-api (the API protos of Envoy). The file is read as the bootstrap
Envoy reads (envoy.config.bootstrap.v3.Bootstrap, YAML as JSON), with:

- unknown fields refused (json_format.ParseDict, ignore_unknown_fields=False), inside
  every typed_config too: each google.protobuf.Any is parsed as the message its @type
  names, so the module defining that message is imported first;
- every deprecated field, enum value or message refused: the proto option
  `deprecated = true`, Envoy's annotations envoy.annotations.deprecated_at_minor_version
  and deprecated_at_minor_version_enum (envoy/annotations/deprecation.proto), and messages
  of a package that udpa.annotations.file_status marks FROZEN.
"""

import importlib
import pkgutil

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

BOOTSTRAP = "envoy.config.bootstrap.v3.Bootstrap"
ANY = "google.protobuf.Any"


def _type_urls(node):
    """Every @type value in a YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type" and isinstance(value, str):
                yield value
            else:
                yield from _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from _type_urls(value)


def _known(full_name):
    try:
        descriptor_pool.Default().FindMessageTypeByName(full_name)
        return True
    except KeyError:
        return False


def _import_package(package):
    """Imports every generated module of a proto package (envoy.config.trace.v3 is the
    directory envoy/config/trace/v3 of xds-protos), so its messages are in the pool."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def load_types(document):
    """Makes every message a @type names known; returns the type URLs that stay unknown."""
    importlib.import_module("envoy.config.bootstrap.v3.bootstrap_pb2")
    unknown = []
    for url in sorted(set(_type_urls(document))):
        full_name = url.rsplit("/", 1)[-1]
        if not _known(full_name):
            package = full_name.rsplit(".", 1)[0]
            try:
                _import_package(package)
            except ImportError:
                pass
        if not _known(full_name):
            unknown.append(url)
    return unknown


def parse(document):
    """The document as a Bootstrap message; raises json_format.ParseError."""
    bootstrap_class = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(BOOTSTRAP))
    return json_format.ParseDict(document, bootstrap_class(), ignore_unknown_fields=False)


def _deprecation_annotations():
    from envoy.annotations import deprecation_pb2
    from udpa.annotations import status_pb2

    return deprecation_pb2, status_pb2


def _field_deprecation(field, deprecation_pb2):
    options = field.GetOptions()
    if options.deprecated:
        return "deprecated"
    if options.HasExtension(deprecation_pb2.deprecated_at_minor_version):
        return f"deprecated at API version {options.Extensions[deprecation_pb2.deprecated_at_minor_version]}"
    return None


def _enum_value_deprecation(value, deprecation_pb2):
    options = value.GetOptions()
    if options.deprecated:
        return "deprecated"
    if options.HasExtension(deprecation_pb2.deprecated_at_minor_version_enum):
        return f"deprecated at API version {options.Extensions[deprecation_pb2.deprecated_at_minor_version_enum]}"
    return None


def _message_deprecation(descriptor, status_pb2):
    if descriptor.GetOptions().deprecated:
        return "a deprecated message"
    file_options = descriptor.file.GetOptions()
    if file_options.HasExtension(status_pb2.file_status):
        if file_options.Extensions[status_pb2.file_status].package_version_status == status_pb2.FROZEN:
            return f"a message of the frozen package {descriptor.file.package}"
    return None


def deprecated_uses(message):
    """(path, why) for every deprecated field, enum value or message set in `message`,
    typed_config contents included."""
    deprecation_pb2, status_pb2 = _deprecation_annotations()
    found = []

    def walk(msg, path):
        descriptor = msg.DESCRIPTOR
        if descriptor.full_name == ANY:
            inner_descriptor = descriptor_pool.Default().FindMessageTypeByName(msg.TypeName())
            inner = message_factory.GetMessageClass(inner_descriptor)()
            msg.Unpack(inner)
            walk(inner, f"{path}<{msg.TypeName()}>")
            return
        why = _message_deprecation(descriptor, status_pb2)
        if why:
            found.append((path or "(root)", why))
        for field, value in msg.ListFields():
            field_path = f"{path}.{field.name}" if path else field.name
            why = _field_deprecation(field, deprecation_pb2)
            if why:
                found.append((field_path, why))
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for key, item in value.items():
                        walk(item, f"{field_path}[{key}]")
                continue
            items = list(enumerate(value)) if field.is_repeated else [(None, value)]
            for index, item in items:
                item_path = field_path if index is None else f"{field_path}[{index}]"
                if isinstance(item, Message):
                    walk(item, item_path)
                elif field.enum_type is not None:
                    enum_value = field.enum_type.values_by_number.get(item)
                    why = enum_value and _enum_value_deprecation(enum_value, deprecation_pb2)
                    if why:
                        found.append((f"{item_path}={enum_value.name}", why))

    walk(message, "")
    return found


def check(report, document, name="envoy/envoy.yaml"):
    """Reports whether `document` (the parsed YAML) is a valid, non-deprecated Bootstrap."""
    unknown = load_types(document)
    if not report.check(f"{name}: every @type is a message of Envoy's API", not unknown, f"unknown: {unknown}"):
        return
    try:
        bootstrap = parse(document)
    except json_format.ParseError as error:
        report.check(f"{name} parses as {BOOTSTRAP} (unknown fields refused)", False, str(error))
        return
    report.check(f"{name} parses as {BOOTSTRAP} (unknown fields refused)", True)
    uses = deprecated_uses(bootstrap)
    report.check(
        f"{name} uses no deprecated field, enum value or message",
        not uses,
        "; ".join(f"{path}: {why}" for path, why in uses),
    )


# Documents the checks above must refuse, each with the check that must catch it: the
# proof that a passing envoy/envoy.yaml means something.
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def _listener_with(typed_config):
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": typed_config}]}],
                }
            ]
        }
    }


def _hcm_with_http_filter(typed_config):
    return _listener_with(
        {"@type": _HCM, "stat_prefix": "s", "http_filters": [{"name": "f", "typed_config": typed_config}]}
    )


SELF_TESTS = [
    ("an unknown field inside a typed_config", "parse", _listener_with({"@type": _HCM, "stat_prefx": "s"})),
    (
        "an unknown @type",
        "types",
        _hcm_with_http_filter({"@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}),
    ),
    (
        "the Wasm filter's fail_open",
        "deprecated",
        _hcm_with_http_filter({"@type": _WASM, "config": {"name": "x", "fail_open": True}}),
    ),
    (
        "a deprecated enum value (ApiVersion V2)",
        "deprecated",
        {"dynamic_resources": {"cds_config": {"ads": {}, "resource_api_version": "V2"}}},
    ),
]


def refused_by(document):
    """Which check refuses `document`: "types", "parse", "deprecated", or None."""
    if load_types(document):
        return "types"
    try:
        bootstrap = parse(document)
    except json_format.ParseError:
        return "parse"
    return "deprecated" if deprecated_uses(bootstrap) else None


def self_test(report):
    for what, expected, document in SELF_TESTS:
        actual = refused_by(document)
        report.check(f"the Envoy API check refuses {what}", actual == expected, f"refused by {actual!r}, not {expected!r}")
    accepted = _hcm_with_http_filter({"@type": _WASM, "config": {"name": "x", "failure_policy": "FAIL_OPEN"}})
    actual = refused_by(accepted)
    report.check("the Envoy API check accepts failure_policy: FAIL_OPEN", actual is None, f"refused by {actual!r}")
