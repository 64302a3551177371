//! The example specs are accepted as they are: they parse with the primitives types, pass the
//! chain's validation, and `zos check` agrees. Bad input gives an error, never a panic.

use std::{path::PathBuf, process::Command};

use zos_primitives::spec::{DeploymentSpec, WorkloadKind};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn parse(name: &str) -> DeploymentSpec {
    let text = std::fs::read_to_string(example(name)).expect("example file");
    let spec: DeploymentSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    spec.validate()
        .unwrap_or_else(|e| panic!("{name} breaks a rule: {e:?}"));
    spec
}

fn zos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .output()
        .expect("running zos")
}

#[test]
fn vm_example_is_a_valid_spec_with_a_disk_env_and_entrypoint() {
    let spec = parse("vm.toml");
    assert_eq!(spec.version, 0);
    let vm = spec
        .workloads
        .iter()
        .find_map(|w| match &w.kind {
            WorkloadKind::Vm(vm) => Some(vm),
            _ => None,
        })
        .expect("a VM workload");
    assert_eq!(vm.mounts.len(), 1);
    assert_eq!(vm.mounts[0].path.as_bytes(), b"/data");
    assert!(!vm.env.is_empty());
    assert!(std::str::from_utf8(vm.entrypoint.as_bytes())
        .unwrap()
        .contains("hello from"));
    assert!(spec
        .workloads
        .iter()
        .any(|w| matches!(w.kind, WorkloadKind::Disk(_))));
}

#[test]
fn network_example_is_a_valid_spec_with_a_sealed_key_of_the_right_length() {
    let spec = parse("network.toml");
    let WorkloadKind::Network(net) = &spec.workloads[0].kind else {
        panic!("not a network")
    };
    assert_eq!(
        net.private_key.0.len() as u32,
        zos_primitives::spec::SEALED_WIREGUARD_KEY_LEN
    );
}

#[test]
fn zos_check_accepts_the_examples_and_applies_image_overrides() {
    for name in ["vm.toml", "network.toml", "health-check.toml"] {
        let out = zos(&["check", example(name).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The health check is described in words.
    let out = zos(&["check", example("health-check.toml").to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("health check of web: http://localhost:8080/ every 10 s"),
        "{said}"
    );
    let root = "ab".repeat(32);
    let out = zos(&[
        "--json",
        "check",
        example("vm.toml").to_str().unwrap(),
        "--image-root",
        &root,
    ]);
    assert!(out.status.success());
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = value.to_string();
    assert!(text.contains(&root), "override not applied: {text}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 0\nworkloads = []\n").unwrap();
    let out = zos(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoWorkloads"));

    let out = zos(&[
        "check",
        example("vm.toml").to_str().unwrap(),
        "--image-root",
        "zz",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not hex"));

    // Nothing listens on port 9: a clear connection error.
    let out = zos(&[
        "--url",
        "ws://127.0.0.1:9",
        "--key",
        "//Alice",
        "farm",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to ws://127.0.0.1:9"));

    let out = zos(&["--key", "not-a-key", "key", "show"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn node_public_config_options_are_checked_before_connecting() {
    // Nothing listens on port 9: an option error must come first.
    let cases: [(&[&str], &str); 4] = [
        (&["--ipv4", "198.51.100.20/24"], "--gw4"),
        (&["--gw6", "fe80::1"], "--ipv6"),
        (&["--clear", "--domain", "gw.example.com"], "--clear"),
        (&[], "nothing to declare"),
    ];
    for (options, expected) in cases {
        let mut args = vec![
            "--url",
            "ws://127.0.0.1:9",
            "--key",
            "//Alice",
            "node",
            "public-config",
            "1",
        ];
        args.extend_from_slice(options);
        let out = zos(&args);
        assert_eq!(out.status.code(), Some(1), "{options:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{options:?}: {stderr}");
        assert!(!stderr.contains("connecting"), "{options:?}: {stderr}");
    }
}
