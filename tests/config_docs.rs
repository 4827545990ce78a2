//! docs/configuration.md lists every setting the node has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn every_setting_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let missing: Vec<String> = instanceserver::config::keys()
        .into_keys()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}"
    );
}

#[test]
fn optional_settings_take_their_type_from_the_environment() {
    let env = [
        (
            "INSTANCESERVER_WEBRTC__PUBLIC_IP".to_string(),
            "203.0.113.7".to_string(),
        ),
        (
            "INSTANCESERVER_WEBRTC__PUBLIC_PORT_BASE".to_string(),
            "31000".to_string(),
        ),
        (
            "INSTANCESERVER_AUTH__AUDIENCE".to_string(),
            "instanceserver".to_string(),
        ),
    ];
    let c = instanceserver::config::load(
        None,
        env,
        &[("instance.snapshot_hz".to_string(), "15".to_string())],
    )
    .unwrap();
    assert_eq!(c.instance.snapshot_hz, Some(15));
    assert_eq!(c.instance.default_snapshot_hz(), 15);
    // One that does not divide the tick rate (60) stops the node.
    let err = instanceserver::config::load(
        None,
        [],
        &[("instance.snapshot_hz".to_string(), "25".to_string())],
    )
    .unwrap_err();
    assert!(err.to_string().contains("snapshot_hz 25"), "{err}");
    assert_eq!(c.webrtc.public_ip, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(c.webrtc.public_port_base, Some(31000));
    assert_eq!(c.auth.audience.as_deref(), Some("instanceserver"));
}

#[test]
fn a_variable_with_one_underscore_is_an_error_not_ignored() {
    let env = [(
        "INSTANCESERVER_HTTP_LISTEN".to_string(),
        "0.0.0.0:80".to_string(),
    )];
    let e = instanceserver::config::load(None, env, &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("INSTANCESERVER_HTTP_LISTEN") && e.contains("two underscores"),
        "{e}"
    );
}

#[test]
fn durations_beyond_a_week_are_refused() {
    let sets = [(
        "instance.empty_timeout_ms".to_string(),
        i64::MAX.to_string(),
    )];
    let e = instanceserver::config::load(None, Vec::new(), &sets)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("instance.empty_timeout_ms") && e.contains("one week"),
        "{e}"
    );
}

#[test]
fn socket_buffers_are_set_apart_and_the_old_key_says_what_replaced_it() {
    let sets = [
        ("shard.socket_recv_bytes".to_string(), "8388608".to_string()),
        ("shard.socket_send_bytes".to_string(), "0".to_string()),
    ];
    let c = instanceserver::config::load(None, Vec::new(), &sets).expect("valid");
    assert_eq!(c.shard.socket_recv_bytes, 8 << 20);
    assert_eq!(c.shard.socket_send_bytes, 0, "0 keeps the kernel's default");
    let defaults = instanceserver::config::Config::default();
    assert_eq!(defaults.shard.socket_recv_bytes, 4 << 20);
    assert_eq!(defaults.shard.socket_send_bytes, 4 << 20);

    let too_small = [("shard.socket_send_bytes".to_string(), "4096".to_string())];
    let e = instanceserver::config::load(None, Vec::new(), &too_small)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shard.socket_send_bytes") && e.contains("65536"),
        "{e}"
    );

    let old = "shard.socket_buffer_bytes";
    let replaced = "shard.socket_recv_bytes and shard.socket_send_bytes";
    let replaced_env =
        "INSTANCESERVER_SHARD__SOCKET_RECV_BYTES and INSTANCESERVER_SHARD__SOCKET_SEND_BYTES";
    let e = instanceserver::config::load(None, Vec::new(), &[(old.into(), "1".into())])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(old) && e.contains(replaced) && e.contains("--set"),
        "{e}"
    );
    let env = [(
        "INSTANCESERVER_SHARD__SOCKET_BUFFER_BYTES".to_string(),
        "1".to_string(),
    )];
    let e = instanceserver::config::load(None, env, &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(replaced_env) && e.contains("INSTANCESERVER_SHARD__SOCKET_BUFFER_BYTES"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("socket-buffers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("node.toml");
    std::fs::write(&file, "[shard]\nsocket_buffer_bytes = 1048576\n").expect("written");
    let e = instanceserver::config::load(Some(&file), Vec::new(), &[])
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.contains(replaced) && e.contains(old) && e.contains("node.toml"),
        "{e}"
    );
}
