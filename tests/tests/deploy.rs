//! The recipes of `deploy/`, checked without a Kubernetes cluster or a Docker engine (none is
//! available where the suite runs): the manifests are read as YAML and held to what they claim —
//! every flag they pass is one the binary documents, the pods run as a user of their own, the
//! probes and Services point at ports that exist, the Secret they mount has the keys they read —
//! and the server's and the agent's command lines from the manifests are run for real, the probe's
//! path asked of that server. The Dockerfile is read for its two stages and its user. An agent
//! following the Slurm recipe's `--server-file` waits out a wrong file and joins once it is right.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blitzen_tests::cluster::{TempFile, binary, start_server_as};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every manifest.
fn manifests() -> Vec<(String, Yaml)> {
    let mut docs = Vec::new();
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for doc in YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}")) {
            docs.push((name.clone(), doc));
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|(_, d)| d["kind"].as_str() == Some(kind)).map(|(_, d)| d).collect()
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|v| {
            v.iter()
                .map(|s| s.as_str().map(str::to_string).unwrap_or_else(|| format!("{s:?}")))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod templates, with the name of what holds each.
fn pods(docs: &[(String, Yaml)]) -> Vec<(String, &Yaml)> {
    ["StatefulSet", "Deployment"]
        .iter()
        .flat_map(|kind| of_kind(docs, kind))
        .map(|d| {
            (d["metadata"]["name"].as_str().unwrap_or("?").to_string(), &d["spec"]["template"])
        })
        .collect()
}

/// The container of `workload`: its command line.
fn command_line(docs: &[(String, Yaml)], workload: &str) -> Vec<String> {
    let (_, pod) = pods(docs).into_iter().find(|(n, _)| n == workload).expect(workload);
    let container = &pod["spec"]["containers"][0];
    let mut line = strings(&container["command"]);
    line.extend(strings(&container["args"]));
    line
}

fn help(program: &str) -> String {
    let out = Command::new(binary(program).expect("built")).arg("--help").output().expect("runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `help` lists `flag` itself (`--cpu` is not `--cpus`).
fn documents(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        next.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

#[test]
fn every_flag_the_manifests_pass_is_one_the_binaries_document() {
    assert!(documents("  --cpus <N>", "--cpus") && !documents("  --cpus <N>", "--cpu"));
    let docs = manifests();
    let mut seen = BTreeSet::new();
    for (name, pod) in pods(&docs) {
        for container in pod["spec"]["containers"].as_vec().expect("containers") {
            let mut line = strings(&container["command"]);
            line.extend(strings(&container["args"]));
            let program = line.first().cloned().unwrap_or_default();
            assert!(
                program == "blitzen-server" || program == "blitzen-client",
                "{name} runs `{program}`"
            );
            let help = help(&program);
            for flag in line.iter().filter(|a| a.starts_with("--")) {
                assert!(documents(&help, flag), "{name}: `{program} --help` has no {flag}");
            }
            seen.insert(program);
        }
    }
    assert_eq!(seen.len(), 2, "a server and an agent: {seen:?}");
}

/// The Deploying page's autoscaling example: every flag of its `blitzen-server` line, and of
/// the job script it describes (`blitzen-client …`), is one the binaries document; `sbatch`'s
/// options come after `--`.
#[test]
fn the_autoscaling_example_passes_only_documented_flags() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploying.md");
    let text = std::fs::read_to_string(page).expect("docs/deploying.md");
    let section = text.split("## Autoscaling on Slurm").nth(1).expect("the section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next());
    let line = block.expect("a sh block").replace("\\\n", " ");
    let (server, sbatch) = line.split_once(" -- ").expect("sbatch options after --");
    let words: Vec<&str> = server.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"blitzen-server"), "{line}");
    let server_help = help("blitzen-server");
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(documents(&server_help, flag), "`blitzen-server --help` has no {flag}");
    }
    assert!(words.contains(&"--autoscale") && sbatch.contains("--partition"), "{line}");
    let script = section.split('(').nth(1).and_then(|s| s.split(')').next()).unwrap_or_default();
    let agent = help("blitzen-client");
    let flags: Vec<&str> = script.split_whitespace().filter(|w| w.starts_with("--")).collect();
    assert!(flags.len() >= 5, "the job script's line: {script}");
    for flag in flags {
        assert!(documents(&agent, flag), "`blitzen-client --help` has no {flag}");
    }
}

#[test]
fn pods_run_as_a_user_of_their_own_and_mount_what_exists() {
    let docs = manifests();
    let secret = of_kind(&docs, "Secret");
    let secret = secret.first().expect("a Secret");
    let secret_name = secret["metadata"]["name"].as_str().expect("named");
    let keys: BTreeSet<&str> = (secret["stringData"].as_hash().expect("stringData").keys())
        .filter_map(Yaml::as_str)
        .collect();
    for (name, pod) in pods(&docs) {
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{name}");
        let uid = spec["securityContext"]["runAsUser"].as_i64().expect("a user");
        assert!(uid > 0, "{name} runs as root");
        for volume in spec["volumes"].as_vec().expect("volumes") {
            if volume["secret"].is_badvalue() {
                continue;
            }
            assert_eq!(volume["secret"]["secretName"].as_str(), Some(secret_name), "{name}");
            for item in volume["secret"]["items"].as_vec().into_iter().flatten() {
                let key = item["key"].as_str().expect("a key");
                assert!(keys.contains(key), "{name} mounts key {key}, which the Secret lacks");
            }
        }
        let container = &spec["containers"][0];
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
        let ports: BTreeSet<&str> = (container["ports"].as_vec().into_iter().flatten())
            .filter_map(|p| p["name"].as_str())
            .collect();
        for probe in ["readinessProbe", "livenessProbe"] {
            if let Some(port) = container[probe]["httpGet"]["port"].as_str() {
                assert!(ports.contains(port), "{name}'s {probe} names port {port}");
                assert_eq!(container[probe]["httpGet"]["path"].as_str(), Some("/health"));
            }
        }
    }
    for service in of_kind(&docs, "Service") {
        let selector = &service["spec"]["selector"];
        let (_, pod) = pods(&docs)
            .into_iter()
            .find(|(_, pod)| pod["metadata"]["labels"] == *selector)
            .expect("a pod the Service selects");
        let ports: BTreeSet<&str> =
            (pod["spec"]["containers"][0]["ports"].as_vec().into_iter().flatten())
                .filter_map(|p| p["name"].as_str())
                .collect();
        for port in service["spec"]["ports"].as_vec().expect("ports") {
            let target = port["targetPort"].as_str().expect("a named target");
            assert!(ports.contains(target), "the Service points at port {target}");
        }
    }
    // The agents reach the server by the Service's name and port.
    let agent = command_line(&docs, "blitzen-agent");
    let server = agent.iter().skip_while(|a| *a != "--server").nth(1).expect("--server");
    let service = of_kind(&docs, "Service")[0];
    let port = service["spec"]["ports"][0]["port"].as_i64().expect("a port");
    assert_eq!(*server, format!("{}:{port}", service["metadata"]["name"].as_str().unwrap_or("?")));
}

/// The manifests' paths, in a folder of the test's own.
fn localized(line: &[String], secret: &TempFile, token: &TempFile, data: &Path) -> Vec<String> {
    line.iter()
        .skip(1)
        .map(|a| match a.as_str() {
            "/etc/blitzen/secret" => secret.arg().to_string(),
            "/etc/blitzen/dashboard-token" => token.arg().to_string(),
            "/var/lib/blitzen/data" => data.display().to_string(),
            "0.0.0.0:8265" => "127.0.0.1:0".to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn the_manifests_command_lines_run_and_the_probe_answers() {
    let docs = manifests();
    let secret =
        TempFile::new("k8s-secret", b"a secret of the length a real one has").expect("file");
    let token = TempFile::new("k8s-token", b"a dashboard token of some length").expect("file");
    let data = std::env::temp_dir().join(format!("blitzen-k8s-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server_line = localized(&command_line(&docs, "blitzen-server"), &secret, &token, &data);
    let args: Vec<&str> = server_line.iter().map(String::as_str).collect();
    let server = start_server_as(Command::new(binary("blitzen-server").expect("built")), &args)
        .expect("the server starts with the manifest's flags");
    // The readiness probe's path, on the dashboard's port.
    let log = || server.process.log_text();
    assert!(
        server.process.wait_for_log("dashboard serving", 1, Duration::from_secs(20)),
        "{}",
        log()
    );
    let url = log()
        .lines()
        .find_map(|l| {
            l.split("url=").nth(1).map(|u| u.split_whitespace().next().unwrap_or("").to_string())
        })
        .expect("the dashboard's address");
    let health = ureq::get(&format!("{url}health")).call().expect("/health answers");
    assert_eq!(health.into_body().read_to_string().expect("a body").trim(), "ok");
    // The agent's command line, pointed at this server instead of the Service.
    let mut agent_line = localized(&command_line(&docs, "blitzen-agent"), &secret, &token, &data);
    let at = agent_line.iter().position(|a| a == "--server").expect("--server");
    agent_line[at + 1] = server.addr.replace("0.0.0.0", "127.0.0.1");
    let mut command = Command::new(binary("blitzen-client").expect("built"));
    command.args(&agent_line);
    let agent = start_agent_as_plain(command);
    assert!(agent.wait_for_log("connected", 1, Duration::from_secs(20)), "{}", agent.log_text());
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

/// `command` as an agent process, stopped when dropped.
fn start_agent_as_plain(command: Command) -> blitzen_tests::cluster::Process {
    blitzen_tests::cluster::start_program(command, "k8s-agent").expect("the agent starts")
}

#[test]
fn the_sample_secret_is_refused_so_it_is_never_used() {
    let docs = manifests();
    let secret = of_kind(&docs, "Secret")[0];
    let value = secret["stringData"]["secret"].as_str().expect("a value");
    let file = TempFile::new("k8s-sample", value.as_bytes()).expect("file");
    let out = Command::new(binary("blitzen-server").expect("built"))
        .args(["--bind", "0.0.0.0", "--port", "0", "--secret-file", file.arg()])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server started with the sample secret");
    assert!(stderr.contains("use at least 16"), "{stderr}");
}

#[test]
fn the_image_builds_in_two_stages_and_runs_as_a_user_of_its_own() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).expect("deploy/Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build") && froms[1].contains("slim"), "{froms:?}");
    assert!(text.contains("blitzen-server") && text.contains("blitzen-client"));
    let user = text.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    let uid: u32 = user.split(':').next().and_then(|u| u.parse().ok()).expect("a numeric user");
    assert!(uid > 0, "the image runs as root");
    let docs = manifests();
    for (name, pod) in pods(&docs) {
        assert_eq!(
            pod["spec"]["securityContext"]["runAsUser"].as_i64(),
            Some(i64::from(uid)),
            "{name}"
        );
    }
}

/// Writes `text` to `path` whole (a rename), as `blitzen-server --address-file` does.
fn write_whole(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).expect("write");
    std::fs::rename(&partial, path).expect("rename");
}

/// An agent following `--server-file` (the Slurm recipe's) waits out a file that is missing,
/// then one without a `server=` line, then one whose fingerprint is no fingerprint — saying
/// each reason once — and joins as soon as the file names the server.
#[test]
fn an_agent_waits_out_a_wrong_server_file_and_joins_once_it_names_the_server() {
    let server = start_server_as(Command::new(binary("blitzen-server").expect("built")), &[])
        .expect("the server starts");
    let marker = TempFile::new("server-file", b"").expect("file");
    let path = marker.path.with_extension("addr");
    let mut command = Command::new(binary("blitzen-client").expect("built"));
    command.args(["--server-file", path.to_str().expect("utf-8"), "--workers", "1"]);
    let agent = start_agent_as_plain(command);
    let limit = Duration::from_secs(20);
    let said = |text: &str| agent.wait_for_log(text, 1, limit);
    assert!(said("No such file"), "{}", agent.log_text());
    write_whole(&path, "nonsense\n");
    assert!(said("has no `server=HOST:PORT` line"), "{}", agent.log_text());
    write_whole(&path, &format!("server={}\nfingerprint=not-hex\n", server.addr));
    assert!(said("not-hex"), "{}", agent.log_text());
    assert!(!agent.log_text().contains("connected"), "{}", agent.log_text());
    write_whole(&path, &format!("server={}\n", server.addr));
    assert!(said("connected"), "{}", agent.log_text());
    drop(agent);
    let _ = std::fs::remove_file(&path);
}
