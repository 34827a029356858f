//! envoy/envoy.yaml as shipped, checked by the official Envoy binary itself, and the one
//! Envoy release the project names everywhere.

use std::process::Command;

use real_envoy::{envoy_binary, filter_wasm, workspace_root, ENVOY_VERSION};

/// `envoy --mode validate` loads the whole bootstrap — every field, the clusters, the
/// tracer, the Wasm filter with its configuration through the filter's own
/// `on_configure` — without opening a socket. The only change is the `.wasm`'s path, which
/// the file gives as the docker-compose mount.
#[test]
fn the_shipped_envoy_yaml_is_valid_for_the_official_envoy() {
    let text = std::fs::read_to_string(workspace_root().join("envoy/envoy.yaml")).unwrap();
    let mounted = "/wasm/consul_enricher.wasm";
    assert!(text.contains(mounted), "envoy.yaml loads {mounted}");
    let local = text.replace(mounted, &filter_wasm().display().to_string());
    let dir = std::env::temp_dir().join(format!("envoy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, local).unwrap();
    let output = Command::new(envoy_binary().unwrap())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
}

#[test]
fn one_envoy_release_everywhere() {
    let root = workspace_root();
    let ensure = std::fs::read_to_string(root.join("tests/tools/ensure.sh")).unwrap();
    assert!(
        ensure.contains(&format!("\nENVOY_VERSION={ENVOY_VERSION}\n")),
        "tests/tools/ensure.sh installs {ENVOY_VERSION}"
    );
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains(&format!("image: envoyproxy/envoy:v{ENVOY_VERSION}\n")),
        "docker-compose.yml runs Envoy {ENVOY_VERSION}"
    );
    let version = Command::new(envoy_binary().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("/{ENVOY_VERSION}/")),
        "the binary: {version}"
    );
}
