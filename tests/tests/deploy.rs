//! The deployment files agree with the binaries: the chart renders what operators expect,
//! and neither compose nor the chart sets a variable the workers would not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use agentfleet_e2e::bin;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    let path = root().join(".tools/bin/helm");
    assert!(
        path.exists(),
        "helm is missing: run .ci/install-deploy-tools.sh"
    );
    path
}

fn render(sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm());
    cmd.arg("template")
        .arg("af")
        .arg(root().join("helm/agentfleet"));
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every environment variable a worker binary reads, from its own `--help`.
fn worker_env_vars() -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for binary in ["reasoning-worker", "synthesis-worker", "agent-worker"] {
        let out = Command::new(bin(binary))
            .arg("--help")
            .output()
            .expect("run --help");
        let help = String::from_utf8_lossy(&out.stdout);
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            vars.insert(name);
        }
    }
    assert!(
        vars.contains("REDIS_URL") && vars.contains("AGENTFLEET_CONCURRENCY"),
        "{vars:?}"
    );
    // Read from the environment directly, not through a flag.
    for extra in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "RUST_LOG"] {
        vars.insert(extra.to_owned());
    }
    vars
}

#[test]
fn the_chart_scales_a_role_with_probes_grace_and_the_provider_secret() {
    let docs = render(&["roles.reasoning.replicas=5", "providerSecret.name=llm-keys"]);
    let deployment = find(&docs, "Deployment", "af-agentfleet-reasoning");
    assert_eq!(deployment["spec"]["replicas"], 5);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let config = find(&docs, "ConfigMap", "af-agentfleet");
    let worker_grace: u64 = config["data"]["AGENTFLEET_SHUTDOWN_GRACE_SECS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace > worker_grace,
        "pod grace {grace}s must exceed the worker's {worker_grace}s"
    );
    let secret_refs: Vec<&Value> = container["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("secretRef"))
        .collect();
    assert_eq!(secret_refs.len(), 1);
    assert_eq!(secret_refs[0]["name"], "llm-keys");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    // The other role keeps the default.
    assert_eq!(
        find(&docs, "Deployment", "af-agentfleet-synthesis")["spec"]["replicas"],
        2
    );
    // No key material in the rendered chart.
    assert!(!serde_yaml::to_string(&docs).unwrap().contains("sk-"));
}

#[test]
fn a_new_role_is_one_values_entry() {
    let docs = render(&[
        "pipeline=reasoning > critique > synthesis",
        "roles.critique.command=agent-worker",
        "roles.critique.provider=openai",
        "roles.critique.replicas=1",
    ]);
    let deployment = find(&docs, "Deployment", "af-agentfleet-critique");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "agent-worker");
    let env = container["env"].as_sequence().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "AGENTFLEET_ROLE" && e["value"] == "critique"),
        "the generic binary is told its role: {env:?}"
    );
    let config = find(&docs, "ConfigMap", "af-agentfleet");
    assert_eq!(
        config["data"]["AGENTFLEET_PIPELINE"],
        "reasoning > critique > synthesis"
    );
    find(&docs, "Service", "af-agentfleet-critique");
    find(&docs, "PodDisruptionBudget", "af-agentfleet-critique");
    // A role with its own binary is not told its name: it knows it.
    let reasoning = find(&docs, "Deployment", "af-agentfleet-reasoning");
    let env = reasoning["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .expect("env");
    assert!(!env.iter().any(|e| e["name"] == "AGENTFLEET_ROLE"));
}

#[test]
fn compose_sets_only_variables_the_workers_read() {
    let known = worker_env_vars();
    let compose: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap())
            .unwrap();
    for service in ["reasoning", "synthesis"] {
        let env = compose["services"][service]["environment"]
            .as_mapping()
            .expect("environment map");
        assert!(!env.is_empty());
        for key in env.keys() {
            let key = key.as_str().unwrap();
            assert!(
                known.contains(key),
                "compose service {service} sets {key}, which no worker flag reads"
            );
        }
    }
}

#[test]
fn the_chart_sets_only_variables_the_workers_read() {
    let known = worker_env_vars();
    let docs = render(&[
        "redis.existingSecret=r",
        "common.otlpEndpoint=http://c:4318",
        "roles.reasoning.model=m",
        "roles.reasoning.baseUrl=http://b",
        "roles.reasoning.systemPrompt=s",
        "redis.tls.caSecret=ca",
        "redis.tls.clientSecret=client",
        "redis.tls.insecure=true",
    ]);
    let config = find(&docs, "ConfigMap", "af-agentfleet");
    for key in config["data"].as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            known.contains(key),
            "the ConfigMap sets {key}, which no worker flag reads"
        );
    }
    let container = &find(&docs, "Deployment", "af-agentfleet-reasoning")["spec"]["template"]["spec"]
        ["containers"][0];
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert!(
            known.contains(name),
            "the Deployment sets {name}, which no worker flag reads"
        );
    }
}

#[test]
fn the_chart_mounts_redis_tls_secrets_and_points_the_flags_at_them() {
    let docs = render(&[
        "redis.url=rediss://redis:6380",
        "redis.tls.caSecret=redis-ca",
        "redis.tls.clientSecret=redis-client",
        "networkPolicy.enabled=true",
    ]);
    let pod = &find(&docs, "Deployment", "af-agentfleet-synthesis")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: BTreeMap<&str, &str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["value"].as_str()?)))
        .collect();
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["secret"]["secretName"].as_str().unwrap(),
            )
        })
        .collect();
    for (var, volume, secret) in [
        ("AGENTFLEET_REDIS_CA_FILE", "redis-ca", "redis-ca"),
        (
            "AGENTFLEET_REDIS_CLIENT_CERT",
            "redis-client",
            "redis-client",
        ),
        (
            "AGENTFLEET_REDIS_CLIENT_KEY",
            "redis-client",
            "redis-client",
        ),
    ] {
        let path = env[var];
        let (_, dir) = mounts.iter().find(|(n, _)| *n == volume).unwrap();
        assert!(path.starts_with(dir), "{var}={path} is not under {dir}");
        assert_eq!(volumes[volume], secret);
    }
    assert!(!env.contains_key("AGENTFLEET_REDIS_TLS_INSECURE"));
    let policy = find(&docs, "NetworkPolicy", "af-agentfleet");
    let ingress = policy["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(
        ingress.len(),
        1,
        "one ingress rule: Prometheus to the metrics port"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], "metrics");
    let egress_ports: Vec<u64> = policy["spec"]["egress"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_sequence().unwrap().iter())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(egress_ports, [53, 53, 6379, 443]);
    // Off by default.
    assert!(!render(&[]).iter().any(|d| d["kind"] == "NetworkPolicy"));
}

/// Every environment variable `agentfleet COMMAND` reads, from its own `--help`.
fn cli_env_vars(command: &str) -> BTreeSet<String> {
    let out = Command::new(bin("agentfleet"))
        .args([command, "--help"])
        .output()
        .expect("run agentfleet --help");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|part| part.split([']', '=']).next())
        .map(|v| v.trim().to_owned())
        .collect()
}

#[test]
fn the_inspector_is_off_by_default_and_renders_a_deployment_and_service_with_its_token() {
    let docs = render(&[]);
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "af-agentfleet-inspector"),
        "the inspector renders only when enabled"
    );
    // Enabled without a token Secret: refused (it listens on the pod's address).
    let out = Command::new(helm())
        .args(["template", "af"])
        .arg(root().join("helm/agentfleet"))
        .args(["--set", "inspector.enabled=true"])
        .output()
        .expect("run helm");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenSecret"));

    let docs = render(&[
        "inspector.enabled=true",
        "inspector.tokenSecret.name=ui-token",
        "redis.existingSecret=r",
    ]);
    let deployment = find(&docs, "Deployment", "af-agentfleet-inspector");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(command, ["agentfleet", "ui", "--addr", "0.0.0.0:8080"]);
    let known = cli_env_vars("ui");
    let env = container["env"].as_sequence().expect("env");
    for var in env {
        let name = var["name"].as_str().expect("name");
        assert!(
            known.contains(name),
            "the inspector sets {name}, which `agentfleet ui` does not read"
        );
    }
    let token = env
        .iter()
        .find(|v| v["name"] == "AGENTFLEET_UI_TOKEN")
        .expect("the token variable");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "ui-token");
    // Not selected by the workers' NetworkPolicy, which admits only the metrics port.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_ne!(labels["app.kubernetes.io/name"], "agentfleet");
    let service = find(&docs, "Service", "af-agentfleet-inspector");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["selector"], *labels);
}

#[test]
fn compose_runs_the_inspector_on_loopback_only() {
    let compose: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap())
            .unwrap();
    let inspector = &compose["services"]["inspector"];
    let ports = inspector["ports"].as_sequence().expect("ports");
    assert!(!ports.is_empty());
    for port in ports {
        assert!(
            port.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{port:?}"
        );
    }
    let known = cli_env_vars("ui");
    for key in inspector["environment"].as_mapping().expect("env").keys() {
        let key = key.as_str().unwrap();
        assert!(
            known.contains(key),
            "compose's inspector sets {key}, which `agentfleet ui` does not read"
        );
    }
}

/// The KEDA trigger's list names are the keys crates/queue names (the chart cannot call it,
/// so this test is where the two meet), summed over lanes by one formula, and on a cluster
/// they use the redis-cluster scaler.
#[test]
fn keda_watches_every_lane_of_the_queue_crates_keys_and_sums_them() {
    use agentfleet_job::Lane;
    for (cluster, shards) in [(false, 1), (true, 2)] {
        let docs = render(&[
            "roles.reasoning.keda.enabled=true",
            &format!("redis.cluster={cluster}"),
            &format!("shards={shards}"),
            "keda.redisAddress=r1:7000\\,r2:7001",
        ]);
        let scaled = find(&docs, "ScaledObject", "af-agentfleet-reasoning");
        let namespace = agentfleet_queue::Namespace::new("agentfleet").unwrap();
        let triggers = scaled["spec"]["triggers"].as_sequence().unwrap();
        let watched: BTreeSet<&str> = triggers
            .iter()
            .map(|t| t["metadata"]["listName"].as_str().unwrap())
            .collect();
        let lanes: BTreeSet<String> = (0..shards)
            .flat_map(|shard| {
                let keys = namespace.queue_shard("reasoning", shard).unwrap();
                [Lane::High, Lane::Normal, Lane::Low].map(|lane| keys.pending_lane(lane))
            })
            .collect();
        assert_eq!(lanes.len(), 3 * shards);
        assert_eq!(
            watched,
            lanes.iter().map(String::as_str).collect::<BTreeSet<_>>()
        );
        let names: Vec<&str> = triggers
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
                .as_str()
                .unwrap(),
            names.join(" + ")
        );
        let scaler = if cluster { "redis-cluster" } else { "redis" };
        let address = if cluster { "addresses" } else { "address" };
        for t in triggers {
            assert_eq!(t["type"], scaler);
            assert_eq!(t["metadata"][address], "r1:7000,r2:7001");
        }
    }
}
