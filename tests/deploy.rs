//! The deploy/ files parse, and agree with the node's configuration and
//! defaults on what the server relies on: ports, counter and list names,
//! health period, CPU, config and secret paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use instanceserver::config::{self, AgonesMode, Config};
use instanceserver::control::agones::shard_port_name;
use serde_yaml::Value;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn yaml(file: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(deploy(file)).unwrap())
        .unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

fn node_config() -> Config {
    let env = [(
        "INSTANCESERVER_AUTH__HS256_SECRET".to_string(),
        "a-secret-of-at-least-32-bytes-for-this-test".to_string(),
    )];
    config::load(Some(&deploy("config.toml")), env, &[]).expect("deploy/config.toml loads")
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string: {v:?}"))
}

fn int_of(v: &Value, path: &[&str]) -> i64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_i64()
        .unwrap_or_else(|| panic!("{path:?} is not an integer: {v:?}"))
}

#[test]
fn the_fleet_matches_the_node_config() {
    let c = node_config();
    assert!(!c.node.dev);
    assert_eq!(c.agones.mode, AgonesMode::Required);
    let fleet = yaml("fleet.yaml");
    assert_eq!(str_of(&fleet, &["kind"]), "Fleet");
    let gs = &fleet["spec"]["template"]["spec"];
    let ports = gs["ports"].as_sequence().unwrap();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the Fleet has no port {name}"))
    };
    // One UDP port per shard, at the port that shard binds.
    let shards = c.shard_count();
    assert_eq!(
        ports
            .iter()
            .filter(|p| p["protocol"].as_str() == Some("UDP"))
            .count(),
        shards
    );
    for k in 0..shards {
        let p = port(&shard_port_name(k));
        assert_eq!(str_of(p, &["protocol"]), "UDP");
        assert_eq!(
            int_of(p, &["containerPort"]),
            i64::from(c.webrtc.udp_port_base) + k as i64
        );
    }
    let http = port("http");
    assert_eq!(str_of(http, &["protocol"]), "TCP");
    assert_eq!(
        int_of(http, &["containerPort"]),
        i64::from(c.http.listen.port())
    );

    // Health: the node pings well inside the period.
    let period_ms = int_of(gs, &["health", "periodSeconds"]) * 1000;
    assert!(
        2 * c.agones.health_interval_ms as i64 <= period_ms,
        "pings every {} ms against a {period_ms} ms period",
        c.agones.health_interval_ms
    );
    // Counters & Lists the node sets.
    let rooms = &gs["counters"][c.agones.rooms_counter.as_str()];
    assert_eq!(
        int_of(rooms, &["capacity"]),
        (shards * c.shard.instances_max) as i64
    );
    let players = &gs["counters"][c.agones.players_counter.as_str()];
    assert_eq!(
        int_of(players, &["capacity"]),
        (shards * c.shard.peers_max) as i64
    );
    let list = &gs["lists"][c.agones.players_list.as_str()];
    assert!((1..=agones::fake::LIST_CAPACITY_MAX).contains(&int_of(list, &["capacity"])));

    // The pod: one CPU per shard, the config and the token where the node reads them.
    let pod = &gs["template"]["spec"];
    let container = &pod["containers"][0];
    let cpu = str_of(container, &["resources", "requests", "cpu"]);
    assert_eq!(cpu, shards.to_string());
    assert_eq!(str_of(container, &["resources", "limits", "cpu"]), cpu);
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let mounted = |path: &str| {
        mounts
            .iter()
            .any(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
    };
    assert!(mounted("/etc/instanceserver/config.toml"));
    let token = c.grpc.token_file.as_ref().expect("a gRPC token file");
    assert!(mounted(token.to_str().unwrap()), "{token:?} is not mounted");
    // Drain finishes before Kubernetes kills the pod.
    let grace_s = int_of(pod, &["terminationGracePeriodSeconds"]);
    assert!(grace_s * 1000 > c.node.drain_grace_ms as i64);
    // Prometheus scrapes the HTTP port.
    let annotations = &fleet["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        str_of(annotations, &["prometheus.io/port"]),
        c.http.listen.port().to_string()
    );
    assert_eq!(str_of(annotations, &["prometheus.io/path"]), "/metrics");
}

#[test]
fn the_autoscaler_scales_the_fleet_on_rooms() {
    let c = node_config();
    let fleet = yaml("fleet.yaml");
    let fas = yaml("fleetautoscaler.yaml");
    assert_eq!(str_of(&fas, &["kind"]), "FleetAutoscaler");
    assert_eq!(
        str_of(&fas, &["spec", "fleetName"]),
        str_of(&fleet, &["metadata", "name"])
    );
    assert_eq!(str_of(&fas, &["spec", "policy", "type"]), "Counter");
    assert_eq!(
        str_of(&fas, &["spec", "policy", "counter", "key"]),
        c.agones.rooms_counter
    );
    let per_node = (c.shard_count() * c.shard.instances_max) as i64;
    let min = int_of(&fas, &["spec", "policy", "counter", "minCapacity"]);
    assert!(min >= per_node && min % per_node == 0, "minCapacity {min}");
}

#[test]
fn kustomize_names_every_file_and_the_image_runs_the_config() {
    let k = yaml("kustomization.yaml");
    for r in k["resources"].as_sequence().unwrap() {
        assert!(deploy(r.as_str().unwrap()).exists(), "{r:?}");
    }
    let generated = &k["configMapGenerator"][0];
    let fleet = yaml("fleet.yaml");
    let volumes = fleet["spec"]["template"]["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    let config_map = volumes
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .unwrap();
    assert_eq!(str_of(generated, &["name"]), config_map);
    assert_eq!(generated["files"][0].as_str(), Some("config.toml"));
    let docker = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(docker.contains("--config\", \"/etc/instanceserver/config.toml\""));
    let user = docker
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("the image sets a user");
    assert!(!user.contains("root") && user != "USER 0", "{user}");
}
