//! docker-compose.yml keeps the promises users rely on (`scripts/test` also checks it with
//! `docker-compose config`): metrics are not sent to Jaeger, which takes none; the broker
//! and the worker use one set of credentials; every host port is on 127.0.0.1, configurable,
//! and off the defaults a developer's own RabbitMQ, Redis or LocalStack use; LocalStack is
//! the version the tests run.

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn metrics_stay_away_from_jaeger() {
    let compose = read("docker-compose.yml");
    assert!(
        compose.contains("OTEL_METRICS_EXPORTER: ${OTEL_METRICS_EXPORTER:-none}"),
        "the workers export traces only by default"
    );
}

#[test]
fn broker_and_workers_share_one_set_of_credentials() {
    let compose = read("docker-compose.yml");
    assert!(compose.contains("RABBITMQ_DEFAULT_USER: ${RABBITMQ_USER:-guest}"));
    assert!(compose.contains("RABBITMQ_DEFAULT_PASS: ${RABBITMQ_PASSWORD:-guest}"));
    for line in compose.lines().filter(|l| l.contains("amqp://")) {
        assert!(
            line.contains("amqp://${RABBITMQ_USER:-guest}:${RABBITMQ_PASSWORD:-guest}@"),
            "a worker URL with credentials of its own: {line}"
        );
    }
}

#[test]
fn host_ports_are_local_configurable_and_clear_of_the_usual_ones() {
    let compose = read("docker-compose.yml");
    let mut published = 0;
    let mut in_ports = false;
    for line in compose.lines() {
        let trimmed = line.trim();
        if trimmed == "ports:" {
            in_ports = true;
            continue;
        }
        if in_ports && trimmed.starts_with("- ") {
            published += 1;
            let mapping = trimmed.trim_start_matches("- ").trim_matches('"');
            assert!(
                mapping.starts_with("127.0.0.1:${"),
                "local and configurable: {line}"
            );
            let default = mapping
                .split(":-")
                .nth(1)
                .and_then(|rest| rest.split('}').next())
                .unwrap_or_else(|| panic!("a default port: {line}"));
            for taken in ["5672", "15672", "4566", "6379", "5432", "4318", "8080"] {
                assert_ne!(
                    default, taken,
                    "clashes with a service users already run: {line}"
                );
            }
        } else {
            in_ports = false;
        }
    }
    assert!(published >= 5, "the stack publishes its ports: {published}");
}

#[test]
fn localstack_is_the_version_the_tests_run() {
    let lib = read("scripts/lib.sh");
    let version = lib
        .lines()
        .find_map(|l| l.strip_prefix("LOCALSTACK_VERSION="))
        .expect("scripts/lib.sh pins LocalStack");
    let compose = read("docker-compose.yml");
    assert!(
        compose.contains(&format!("image: localstack/localstack:{version}")),
        "compose pins LocalStack {version}"
    );
}
