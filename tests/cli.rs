//! `sluice check` as an operator uses it: unset `*_env` variables are warnings (errors with `--strict`), `--print`
//! shows the effective config with secrets masked, and `-c` names the file.

mod process_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use process_support::{Scratch, sluice_bin};

/// A config file named after `test`, holding `text`, in a directory removed with it when this is dropped.
struct ConfigFile {
    _dir: Scratch,
    path: PathBuf,
}

impl std::ops::Deref for ConfigFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

fn file(test: &str, text: &str) -> ConfigFile {
    let dir = Scratch::new(&format!("sluice-cli-{test}"));
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    ConfigFile { _dir: dir, path }
}

/// `sluice ARGS…` with `env` added and no `SLUICE_*` variables of the test's own: (exit code, stdout, stderr).
fn sluice(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(sluice_bin());
    command.args(args).env_remove("SLUICE_CONFIG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE__") {
            command.env_remove(k);
        }
    }
    command.envs(env.iter().copied());
    let out = command.output().expect("run sluice");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

const SECRETS: &str = r#"
[brokers.rabbit]
kind = "amqp"
url_env = "SLUICE_CLI_TEST_UNSET_AMQP_URL"

[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
options = { "sasl.password" = "hunter2-in-the-file", "ssl.key.password" = "hunter3-key", "sasl.jaas.config" = "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"hunter4-jaas\";" }

[[routes]]
name = "hooks"
match = { path = "/hooks", methods = ["POST"] }
verify = { scheme = "github", secret_env = "SLUICE_CLI_TEST_UNSET_SECRET" }
publish = { broker = "rabbit", exchange = "", routing_key = "hooks" }
"#;

#[test]
fn check_warns_about_unset_variables_and_strict_refuses_them() {
    let path = file("unset", SECRETS);
    let path = path.to_str().unwrap();

    let (code, out, _) = sluice(&["check", path], &[]);
    assert_eq!(code, 0, "{out}");
    for var in ["SLUICE_CLI_TEST_UNSET_AMQP_URL", "SLUICE_CLI_TEST_UNSET_SECRET"] {
        assert!(out.lines().any(|l| l.starts_with("warning: ") && l.contains(var)), "{var} is a warning:\n{out}");
    }
    assert!(out.contains("ok: 1 routes, 0 upstreams, 2 brokers"), "{out}");

    let (code, out, err) = sluice(&["check", "--strict", path], &[]);
    assert_eq!(code, 1, "{out}");
    for var in ["SLUICE_CLI_TEST_UNSET_AMQP_URL", "SLUICE_CLI_TEST_UNSET_SECRET"] {
        assert!(out.lines().any(|l| !l.starts_with("warning") && l.contains(var)), "{var} is an error:\n{out}");
    }
    assert!(err.contains("2 problem(s)"), "{err}");

    // `run` never starts without them.
    let (code, _, err) = sluice(&["run", "-c", path], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SLUICE_CLI_TEST_UNSET_AMQP_URL"), "{err}");

    // Set, both pass, and the other problems stay errors either way.
    let env = [
        ("SLUICE_CLI_TEST_UNSET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ("SLUICE_CLI_TEST_UNSET_SECRET", "s3cret"),
    ];
    assert_eq!(sluice(&["check", "--strict", path], &env).0, 0);
    let broken = file("unset-broken", &SECRETS.replace("routing_key = \"hooks\"", "routing_key = \"{path.nope}\""));
    let (code, out, _) = sluice(&["check", broken.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("{path.nope}"), "{out}");
}

#[test]
fn check_print_shows_the_effective_config_with_secrets_masked() {
    let path = file("print", SECRETS);
    let env = [
        ("SLUICE_CLI_TEST_UNSET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ("SLUICE_CLI_TEST_UNSET_SECRET", "s3cret"),
        // An environment override shows in the effective config.
        ("SLUICE__SERVER__SHUTDOWN_GRACE", "7s"),
    ];
    let (code, out, err) = sluice(&["-c", path.to_str().unwrap(), "check", "--print"], &env);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{out}"));
    assert_eq!(doc["server"]["shutdown_grace"], "7s", "overrides applied");
    assert_eq!(doc["server"]["request_timeout"], "30s", "defaults filled in");
    for option in ["sasl.password", "ssl.key.password", "sasl.jaas.config"] {
        assert_eq!(doc["brokers"]["events"]["options"][option], "***", "{option}");
    }
    assert_eq!(doc["brokers"]["rabbit"]["url_env"], "SLUICE_CLI_TEST_UNSET_AMQP_URL", "variable names stay");
    assert_eq!(doc["routes"][0]["name"], "hooks");
    for secret in ["hunter2", "hunter3", "hunter4", "s3cret"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} shown:\n{out}\n{err}");
    }
    assert!(err.contains("ok: 1 routes"), "the summary goes to stderr: {err}");
}

#[test]
fn environment_overrides_set_scalars_and_comma_separated_lists() {
    let path = file(
        "env",
        "[upstreams.svc]\nendpoints = [\"http://127.0.0.1:1\"]\n\
         [[routes]]\nname = \"a\"\nmatch = { path_prefix = \"/\" }\nforward = { upstream = \"svc\" }\n",
    );
    let env = [
        ("SLUICE__UPSTREAMS__SVC__ENDPOINTS", "http://127.0.0.1:2,http://127.0.0.1:3"),
        ("SLUICE__SERVER__TRUSTED_PROXIES", "10.0.0.0/8,192.168.0.0/16"),
        ("SLUICE__UPSTREAMS__SVC__CONNECT_TIMEOUT", "250ms"),
        ("SLUICE__SERVER__MAX_CONNECTIONS", "77"),
    ];
    let (code, out, err) = sluice(&["check", "--print", path.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["upstreams"]["svc"]["endpoints"], serde_json::json!(["http://127.0.0.1:2", "http://127.0.0.1:3"]));
    assert_eq!(doc["server"]["trusted_proxies"], serde_json::json!(["10.0.0.0/8", "192.168.0.0/16"]));
    assert_eq!(doc["upstreams"]["svc"]["connect_timeout"], "250ms");
    assert_eq!(doc["server"]["max_connections"], 77);
    // Without a list variable, a value with a comma stays one string.
    let (code, out, err) =
        sluice(&["check", "--print", path.to_str().unwrap()], &[("SLUICE__TELEMETRY__SERVICE_NAME", "a,b")]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["telemetry"]["service_name"], "a,b");
}

#[test]
fn check_names_the_line_and_column_of_a_toml_syntax_error() {
    let path = file(
        "syntax",
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nname = \"a\"\nmatch = { path = \"/a\" \nforward = { upstream = \"u\" }\n",
    );
    let (code, out, err) = sluice(&["check", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("line 7, column 1"), "the position of the error: {all}");
    assert!(all.contains("forward = { upstream = \"u\" }"), "the line itself is quoted: {all}");
}
