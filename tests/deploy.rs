//! deploy/: the container, compose and Kubernetes files agree with each other
//! and with the real binary — `scopegate check` accepts their route tables,
//! and a gateway started from them serves the probe paths, proxies, and
//! answers forward-auth the way the manifests say. Validating the manifests
//! against the Kubernetes schemas is `deploy/check.sh`'s job.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use support::keys::TestKey;
use support::{build_request, raw_request, valid_claims, Alg, Idp, RawResponse, Upstream};

const SCOPEGATE: &str = env!("CARGO_BIN_EXE_scopegate");
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
const DEFAULT_IDENTITY_HEADERS: [&str; 2] = ["X-Auth-Subject", "X-Auth-Scopes"];

// ---------------------------------------------------------------------------
// Files

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn deploy_path(rel: &str) -> PathBuf {
    repo_path("deploy").join(rel)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `*.yaml` / `*.yml` below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The YAML documents of a file (multi-document aware; empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml")
    )
}

// ---------------------------------------------------------------------------
// YAML access

static NULL: Value = Value::Null;

/// `v.a.b.0.c`, or Null when any step is missing.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .filter(|k| !k.is_empty())
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) if v.is_sequence() => v.get(i).unwrap_or(&NULL),
            _ => v.get(key).unwrap_or(&NULL),
        })
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string in {v:?}"))
}

fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path).as_sequence().map_or(&[], |s| s.as_slice())
}

fn set(v: &mut Value, key: &str, value: impl Into<Value>) {
    v.as_mapping_mut()
        .expect("a mapping")
        .insert(Value::from(key), value.into());
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("`{text}` is not IP:PORT: {e}"))
}

fn listen_addr(routes: &Value, key: &str, default: &str) -> SocketAddr {
    addr(at(routes, key).as_str().unwrap_or(default))
}

/// `30s`, `2m`, `1h`, `500ms` -> seconds (rounded up).
fn duration_secs(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("bad duration `{text}`"));
    match unit {
        "ms" => n.div_ceil(1000),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => panic!("bad duration `{text}`"),
    }
}

/// The `${NAME}` references in a config text.
fn env_references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let tail = &rest[start + 2..];
        let end = tail.find('}').expect("unclosed ${");
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// `s` with every `${NAME}` replaced from `env`.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for name in env_references(s) {
        let value = env
            .get(&name)
            .unwrap_or_else(|| panic!("${{{name}}} is not set"));
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

// ---------------------------------------------------------------------------
// Kubernetes manifests

/// The objects of one kustomization directory.
struct Manifests {
    dir: PathBuf,
    objects: Vec<Value>,
}

impl Manifests {
    fn load(rel: &str) -> Manifests {
        let dir = deploy_path(rel);
        let mut objects = Vec::new();
        for path in yaml_files(&dir) {
            if path.parent() == Some(dir.as_path()) && !is_kustomization(&path) {
                objects.extend(documents(&path));
            }
        }
        assert!(!objects.is_empty(), "no manifests in {}", dir.display());
        Manifests { dir, objects }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| at(o, "kind").as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str, name: &str, namespace: Option<&str>) -> &Value {
        let found: Vec<_> = self
            .of_kind(kind)
            .into_iter()
            .filter(|o| at(o, "metadata.name").as_str() == Some(name))
            .filter(|o| namespace.is_none() || at(o, "metadata.namespace").as_str() == namespace)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {kind} {name} (namespace {namespace:?}) in {}",
            self.dir.display()
        );
        found[0]
    }
}

/// The scopegate container of a Deployment and the route table it loads.
struct GatewayPod<'a> {
    deployment: &'a Value,
    container: &'a Value,
    /// `--config` as given in the container's args.
    config_path: PathBuf,
    routes_text: String,
    routes: Value,
    /// The container's environment (`valueFrom` entries get a stand-in value).
    env: BTreeMap<String, String>,
}

impl<'a> GatewayPod<'a> {
    fn find(m: &'a Manifests, deployment: &str) -> GatewayPod<'a> {
        let deployment = m.one("Deployment", deployment, None);
        let namespace = at(deployment, "metadata.namespace").as_str();
        let spec = at(deployment, "spec.template.spec");
        let container = seq_at(spec, "containers")
            .iter()
            .find(|c| at(c, "name").as_str() == Some("scopegate"))
            .expect("a container named scopegate");

        let args: Vec<&str> = seq_at(container, "args")
            .iter()
            .map(|a| a.as_str().expect("args are strings"))
            .collect();
        assert_eq!(
            args.first(),
            Some(&"run"),
            "scopegate args must start with `run`"
        );
        let config = args
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| args.get(i + 1))
            .expect("scopegate args name `--config FILE`");
        let config_path = PathBuf::from(config);
        let config_dir = config_path.parent().expect("--config has a directory");
        let file = config_path.file_name().unwrap().to_str().unwrap();

        // The config directory is a volume mount, not a subPath file mount.
        let mounts: Vec<&Value> = seq_at(container, "volumeMounts")
            .iter()
            .filter(|v| Path::new(str_at(v, "mountPath")) == config_dir)
            .collect();
        assert_eq!(
            mounts.len(),
            1,
            "exactly one volume must be mounted at the --config directory {}",
            config_dir.display()
        );
        let mount = mounts[0];
        assert!(
            at(mount, "subPath").is_null() && at(mount, "subPathExpr").is_null(),
            "the routes volume must not use subPath: it would never see ConfigMap updates"
        );
        assert_eq!(
            at(mount, "readOnly").as_bool(),
            Some(true),
            "mount routes read-only"
        );
        let volume = seq_at(spec, "volumes")
            .iter()
            .find(|v| at(v, "name") == at(mount, "name"))
            .expect("the mounted volume is declared");
        let configmap_name = str_at(volume, "configMap.name");
        assert!(
            seq_at(volume, "configMap.items").is_empty(),
            "configMap.items would rename keys; mount the whole ConfigMap"
        );
        let configmap = m.one("ConfigMap", configmap_name, namespace);
        let routes_text = at(configmap, "data")
            .get(file)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("ConfigMap {configmap_name} has no key {file}"))
            .to_owned();
        let routes: Value = serde_yaml::from_str(&routes_text)
            .unwrap_or_else(|e| panic!("ConfigMap {configmap_name}/{file}: {e}"));

        let env = seq_at(container, "env")
            .iter()
            .map(|e| {
                let name = str_at(e, "name").to_owned();
                let value = match at(e, "value").as_str() {
                    Some(v) => v.to_owned(),
                    None => format!("stand-in-for-{name}"),
                };
                (name, value)
            })
            .collect();

        GatewayPod {
            deployment,
            container,
            config_path,
            routes_text,
            routes,
            env,
        }
    }

    fn pod_spec(&self) -> &'a Value {
        at(self.deployment, "spec.template.spec")
    }

    /// containerPort numbers by name, for one container.
    fn ports_of(container: &Value) -> Vec<(Option<String>, u16)> {
        seq_at(container, "ports")
            .iter()
            .map(|p| {
                let number = at(p, "containerPort").as_u64().expect("containerPort") as u16;
                (at(p, "name").as_str().map(str::to_owned), number)
            })
            .collect()
    }

    /// A probe's or Service's port (number or name) -> the scopegate container's port number.
    fn resolve(&self, container: &Value, port: &Value) -> Option<u16> {
        match port {
            Value::Number(n) => n.as_u64().map(|n| n as u16),
            Value::String(name) => Self::ports_of(container)
                .into_iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, number)| number),
            _ => None,
        }
    }

    fn has_container_port(&self, port: u16) -> bool {
        Self::ports_of(self.container)
            .iter()
            .any(|(_, n)| *n == port)
    }

    /// The ports the other containers of the pod declare (the app's).
    fn other_container_ports(&self) -> Vec<u16> {
        seq_at(self.pod_spec(), "containers")
            .iter()
            .filter(|c| at(c, "name").as_str() != Some("scopegate"))
            .flat_map(|c| Self::ports_of(c).into_iter().map(|(_, n)| n))
            .collect()
    }

    /// Services whose selector picks this Deployment's pods.
    fn services<'m>(&self, m: &'m Manifests) -> Vec<&'m Value> {
        let labels = at(self.deployment, "spec.template.metadata.labels");
        let namespace = at(self.deployment, "metadata.namespace");
        m.of_kind("Service")
            .into_iter()
            .filter(|s| at(s, "metadata.namespace") == namespace)
            .filter(|s| {
                let selector = at(s, "spec.selector").as_mapping();
                selector.is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
            })
            .collect()
    }

    /// Probes on the admin listener, at the paths the binary serves.
    fn check_probes(&self) {
        let admin = listen_addr(&self.routes, "admin_listen", DEFAULT_ADMIN_LISTEN);
        assert!(
            admin.ip().is_unspecified(),
            "admin_listen {admin} must be 0.0.0.0 in a pod: the kubelet probes the pod IP"
        );
        assert!(
            self.has_container_port(admin.port()),
            "the scopegate container must declare containerPort {} (admin_listen)",
            admin.port()
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = at(self.container, &format!("{probe}.httpGet"));
            assert!(!get.is_null(), "scopegate needs an httpGet {probe}");
            assert_eq!(at(get, "path").as_str(), Some(path), "{probe} path");
            assert_eq!(
                self.resolve(self.container, at(get, "port")),
                Some(admin.port()),
                "{probe} must target the admin_listen port {}",
                admin.port()
            );
        }
    }

    /// Non-root, read-only root, no privilege escalation, no capabilities, seccomp.
    fn check_security(&self) {
        let pod = at(self.pod_spec(), "securityContext");
        let c = at(self.container, "securityContext");
        let either = |key: &str| {
            let own = at(c, key);
            if own.is_null() {
                at(pod, key).clone()
            } else {
                own.clone()
            }
        };
        assert_eq!(either("runAsNonRoot"), Value::from(true), "runAsNonRoot");
        assert_eq!(
            either("runAsUser"),
            Value::from(65532),
            "runAsUser 65532 (the image's user)"
        );
        assert_eq!(at(c, "readOnlyRootFilesystem"), &Value::from(true));
        assert_eq!(at(c, "allowPrivilegeEscalation"), &Value::from(false));
        assert!(
            seq_at(c, "capabilities.drop").contains(&Value::from("ALL")),
            "capabilities.drop must contain ALL"
        );
        assert!(
            seq_at(c, "capabilities.add").is_empty(),
            "scopegate needs no capabilities"
        );
        assert_eq!(either("seccompProfile"), {
            let mut m = Mapping::new();
            m.insert("type".into(), "RuntimeDefault".into());
            Value::Mapping(m)
        });
    }

    fn check_resources(&self) {
        let r = at(self.container, "resources");
        assert_eq!(str_at(r, "requests.cpu"), "50m");
        assert_eq!(str_at(r, "requests.memory"), "32Mi");
        assert_eq!(str_at(r, "limits.memory"), "128Mi");
    }

    /// The kubelet must not SIGKILL scopegate while it drains.
    fn check_termination_grace(&self) {
        let grace = at(&self.routes, "shutdown_grace")
            .as_str()
            .map_or(DEFAULT_SHUTDOWN_GRACE_SECS, duration_secs);
        let pre_stop = at(self.container, "lifecycle.preStop.sleep.seconds")
            .as_u64()
            .unwrap_or(0);
        let termination = at(self.pod_spec(), "terminationGracePeriodSeconds")
            .as_u64()
            .unwrap_or(30);
        assert!(
            termination > pre_stop + grace,
            "terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop}s + shutdown_grace {grace}s"
        );
    }

    /// Every `${NAME}` in routes.yaml is set in the container's env.
    fn check_env(&self) {
        for name in env_references(&self.routes_text) {
            assert!(
                self.env.contains_key(&name),
                "routes.yaml uses ${{{name}}} but the scopegate container does not set it"
            );
        }
    }

    fn check_common(&self) {
        self.check_probes();
        self.check_security();
        self.check_resources();
        self.check_termination_grace();
        self.check_env();
    }
}

/// Every file of the directory is in its kustomization, and every resource exists.
fn check_kustomization(rel: &str) {
    let dir = deploy_path(rel);
    let k = &documents(&dir.join("kustomization.yaml"))[0];
    assert_eq!(str_at(k, "kind"), "Kustomization");
    let listed: BTreeSet<String> = seq_at(k, "resources")
        .iter()
        .map(|r| r.as_str().expect("resource").to_owned())
        .collect();
    let present: BTreeSet<String> = yaml_files(&dir)
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()) && !is_kustomization(p))
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, present, "{rel}/kustomization.yaml resources");
}

/// The identity headers the config sends (forward.identity_headers or the default).
fn identity_headers(routes: &Value) -> BTreeSet<String> {
    match at(routes, "forward.identity_headers").as_mapping() {
        Some(m) => m
            .keys()
            .map(|k| k.as_str().unwrap().to_ascii_lowercase())
            .collect(),
        None => DEFAULT_IDENTITY_HEADERS
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// Static agreement between files

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&deploy_path(""));
    assert!(
        files.len() >= 10,
        "expected the deploy/ manifests, found {files:?}"
    );
    for path in &files {
        let docs = documents(path);
        assert!(
            !docs.is_empty(),
            "{} holds no YAML document",
            path.display()
        );
        if path.starts_with(deploy_path("kubernetes")) {
            for doc in &docs {
                assert!(
                    at(doc, "apiVersion").is_string(),
                    "{}: apiVersion",
                    path.display()
                );
                assert!(at(doc, "kind").is_string(), "{}: kind", path.display());
                if !is_kustomization(path) {
                    assert!(
                        at(doc, "metadata.name").is_string(),
                        "{}: metadata.name",
                        path.display()
                    );
                }
            }
        }
    }
}

#[test]
fn sidecar_deployment_agrees_with_its_routes() {
    check_kustomization("kubernetes");
    let m = Manifests::load("kubernetes");
    let pod = GatewayPod::find(&m, "orders-api");
    pod.check_common();

    let listen = listen_addr(&pod.routes, "listen", DEFAULT_LISTEN);
    assert!(
        listen.ip().is_unspecified(),
        "listen {listen} must be 0.0.0.0 in a pod"
    );
    assert!(
        pod.has_container_port(listen.port()),
        "the scopegate container must declare containerPort {} (listen)",
        listen.port()
    );

    // The app is the pod's other container, reached over loopback.
    let upstream = str_at(&pod.routes, "upstream");
    let upstream = upstream.strip_prefix("http://").expect("http:// upstream");
    let upstream = addr(upstream);
    assert!(
        upstream.ip().is_loopback(),
        "the app is reached on 127.0.0.1"
    );
    let app_ports = pod.other_container_ports();
    assert!(
        app_ports.contains(&upstream.port()),
        "upstream port {} must be the app container's port (app ports {app_ports:?})",
        upstream.port()
    );

    // The Service sends traffic to the gateway, never to the app.
    let services = pod.services(&m);
    assert!(!services.is_empty(), "a Service must select the pods");
    for service in services {
        for port in seq_at(service, "spec.ports") {
            let target = pod.resolve(pod.container, at(port, "targetPort"));
            assert_eq!(
                target,
                Some(listen.port()),
                "Service {} port {:?} must target scopegate's listen port {} (never the app's)",
                str_at(service, "metadata.name"),
                at(port, "port"),
                listen.port()
            );
        }
    }
    assert!(
        !app_ports.contains(&listen.port()),
        "the app must not share scopegate's port"
    );

    // No NetworkPolicy opens the app's port.
    for policy in m.of_kind("NetworkPolicy") {
        for rule in seq_at(policy, "spec.ingress") {
            let ports = seq_at(rule, "ports");
            assert!(
                !ports.is_empty(),
                "an ingress rule without ports opens the app's port"
            );
            for p in ports {
                let n = at(p, "port").as_u64().map(|n| n as u16);
                assert!(
                    n.is_some_and(|n| !app_ports.contains(&n)),
                    "NetworkPolicy must not open the app's port: {p:?}"
                );
            }
        }
    }
}

#[test]
fn forward_auth_deployment_agrees_with_its_routes_and_ingress() {
    check_kustomization("kubernetes/forward-auth");
    let m = Manifests::load("kubernetes/forward-auth");
    let pod = GatewayPod::find(&m, "scopegate");
    pod.check_common();
    let namespace = str_at(pod.deployment, "metadata.namespace");

    let fa = listen_addr(&pod.routes, "forward_auth.listen", "");
    assert!(
        fa.ip().is_unspecified(),
        "forward_auth.listen {fa} must be 0.0.0.0 in a pod"
    );
    assert!(
        pod.has_container_port(fa.port()),
        "containerPort {}",
        fa.port()
    );
    let peers = seq_at(&pod.routes, "forward_auth.trusted_peers");
    assert!(
        !peers.is_empty(),
        "trusted_peers must be set (the default is loopback only)"
    );
    for p in peers {
        let p = p.as_str().unwrap();
        assert!(
            !p.ends_with("/0"),
            "trusted_peers {p} would let anyone name the original request"
        );
    }

    // The Service port that reaches forward_auth.listen.
    let services = pod.services(&m);
    let (service, service_port) = services
        .iter()
        .flat_map(|s| seq_at(s, "spec.ports").iter().map(move |p| (*s, p)))
        .find(|(_, p)| pod.resolve(pod.container, at(p, "targetPort")) == Some(fa.port()))
        .expect("a Service port targeting forward_auth.listen");
    let service_name = str_at(service, "metadata.name");
    let service_port = at(service_port, "port").as_u64().unwrap();

    let ingress = m.of_kind("Ingress").into_iter().next().expect("an Ingress");
    let annotations = at(ingress, "metadata.annotations");
    let annotation = |key: &str| -> &str {
        annotations
            .get(format!("nginx.ingress.kubernetes.io/{key}"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("Ingress annotation {key} missing"))
    };
    let auth_url = annotation("auth-url");
    let rest = auth_url
        .strip_prefix("http://")
        .expect("auth-url is http://");
    let (authority, path) = rest.split_at(rest.find('/').expect("auth-url has a path"));
    assert_eq!(path, "/verify", "auth-url path");
    let (host, port) = authority.rsplit_once(':').expect("auth-url names the port");
    let fqdn = format!("{service_name}.{namespace}.svc.cluster.local");
    assert!(
        host == fqdn || host == format!("{service_name}.{namespace}.svc"),
        "auth-url host {host} must be the scopegate Service ({fqdn})"
    );
    assert_eq!(
        port.parse::<u64>().ok(),
        Some(service_port),
        "auth-url port"
    );

    let copied: BTreeSet<String> = annotation("auth-response-headers")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(
        copied,
        identity_headers(&pod.routes),
        "auth-response-headers must copy exactly the identity headers"
    );

    // ingress-nginx names the path as X-Original-URL; /verify reads X-Original-URI.
    let ingress_ns = str_at(ingress, "metadata.namespace");
    let (cm_ns, cm_name) = annotation("auth-proxy-set-headers")
        .split_once('/')
        .expect("auth-proxy-set-headers is NAMESPACE/NAME");
    assert_eq!(
        cm_ns, ingress_ns,
        "ingress-nginx only reads that ConfigMap from the Ingress's namespace"
    );
    let headers = m.one("ConfigMap", cm_name, Some(cm_ns));
    assert_eq!(
        at(headers, "data")
            .get("X-Original-URI")
            .and_then(Value::as_str),
        Some("$request_uri")
    );
}

#[test]
fn compose_file_agrees_with_its_routes() {
    let compose = &documents(&deploy_path("docker-compose.yml"))[0];
    let gateway = at(compose, "services.gateway");
    assert_eq!(at(gateway, "read_only"), &Value::from(true));
    assert_eq!(str_at(gateway, "user"), "65532:65532");
    assert!(seq_at(gateway, "cap_drop").contains(&Value::from("ALL")));
    assert_eq!(str_at(gateway, "build.dockerfile"), "deploy/Dockerfile");
    assert_eq!(
        deploy_path(str_at(gateway, "build.context"))
            .canonicalize()
            .unwrap(),
        repo_path("").canonicalize().unwrap(),
        "the build context is the repository root"
    );

    let command: Vec<&str> = seq_at(gateway, "command")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config = Path::new(command[command.iter().position(|a| *a == "--config").unwrap() + 1]);
    let (source, target) = seq_at(gateway, "volumes")
        .iter()
        .filter_map(|v| {
            let parts: Vec<&str> = v.as_str()?.split(':').collect();
            Some((parts[0], parts[1], parts.get(2) == Some(&"ro")))
        })
        .find(|(_, target, _)| Path::new(target) == config.parent().unwrap())
        .map(|(s, t, ro)| {
            assert!(ro, "mount the routes read-only");
            (s, t)
        })
        .expect("a volume mounted at the --config directory");
    let local = deploy_path(source).join(config.file_name().unwrap());
    assert!(local.is_file(), "{} (mounted at {target})", local.display());

    let routes: Value = serde_yaml::from_str(&read(&local)).unwrap();
    let published: Vec<u16> = seq_at(gateway, "ports")
        .iter()
        .map(|p| {
            let p = p.as_str().unwrap();
            p.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    for (key, default) in [
        ("listen", DEFAULT_LISTEN),
        ("admin_listen", DEFAULT_ADMIN_LISTEN),
    ] {
        let a = listen_addr(&routes, key, default);
        assert!(
            a.ip().is_unspecified(),
            "{key} {a} must be 0.0.0.0 in a container"
        );
        assert!(
            published.contains(&a.port()),
            "{key} port {} is published",
            a.port()
        );
    }
    let upstream = str_at(&routes, "upstream").strip_prefix("http://").unwrap();
    let (host, port) = upstream.split_once(':').unwrap();
    let service = at(compose, "services")
        .get(host)
        .expect("upstream is a compose service");
    assert!(
        seq_at(service, "expose").contains(&Value::from(port)),
        "service {host} exposes {port}"
    );
    let env = compose_env(gateway);
    for name in env_references(&read(&local)) {
        assert!(
            env.contains_key(&name),
            "compose sets {name} for routes.yaml"
        );
    }
}

/// A compose service's environment, `${X:-default}` taken at its default.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    at(service, "environment")
        .as_mapping()
        .expect("environment is a mapping")
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap();
            let v = match v.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                Some(inner) => inner.split_once(":-").map_or("", |(_, d)| d).to_owned(),
                None => v.to_owned(),
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// One Dockerfile instruction's JSON-array argument, e.g. `CMD ["run"]`.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with(&format!("{instruction} ")))
        .collect();
    let last = lines.last().unwrap_or_else(|| panic!("no {instruction}"));
    serde_json::from_str(&last[instruction.len()..])
        .unwrap_or_else(|e| panic!("{instruction} is not exec form: {e}"))
}

#[test]
fn dockerfile_matches_what_the_manifests_expect() {
    let dockerfile = read(&deploy_path("Dockerfile"));
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.starts_with(' '))
        .collect();
    let user = instructions
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert_eq!(
        *user, "USER 65532:65532",
        "numeric non-root user (runAsNonRoot needs a number)"
    );
    assert!(
        !instructions.iter().any(|l| l.starts_with("HEALTHCHECK")),
        "no HEALTHCHECK: the probes do it"
    );
    let expose: BTreeSet<&str> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace())
        .collect();
    for port in [DEFAULT_LISTEN, "0.0.0.0:9901"] {
        let port = addr(port).port().to_string();
        assert!(expose.contains(port.as_str()), "EXPOSE {port}");
    }
    assert_eq!(
        exec_form(&dockerfile, "ENTRYPOINT"),
        ["/usr/local/bin/scopegate"]
    );
    let cmd = exec_form(&dockerfile, "CMD");
    assert_eq!(cmd[..2], ["run", "--config"]);

    // The manifests' --config paths are where the image's CMD looks.
    let m = Manifests::load("kubernetes");
    let pod = GatewayPod::find(&m, "orders-api");
    assert_eq!(pod.config_path, Path::new(&cmd[2]));
    let m = Manifests::load("kubernetes/forward-auth");
    let pod = GatewayPod::find(&m, "scopegate");
    assert_eq!(pod.config_path, Path::new(&cmd[2]));

    // The context (an allow-list) holds everything `cargo build` needs: every
    // target Cargo.toml declares must exist, or the build fails.
    let ignore = read(&deploy_path("Dockerfile.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "Dockerfile.dockerignore is an allow-list"
    );
    let allowed: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let manifest = read(&repo_path("Cargo.toml"));
    let mut needed = vec!["Cargo.toml", "Cargo.lock", "src", "routes.yaml"];
    for (table, dir) in [
        ("[[bench]]", "benches"),
        ("[[example]]", "examples"),
        ("[[bin]]", "src"),
    ] {
        if manifest.contains(table) || repo_path(dir).is_dir() {
            needed.push(dir);
        }
    }
    if repo_path("build.rs").exists() {
        needed.push("build.rs");
    }
    // Workspace members (`members = ["crates/heap"]`): their top-level
    // directory must come along.
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .map(|list| list.trim_end_matches(']'))
        .unwrap_or("");
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if let Some(top) = member.split('/').next().filter(|t| !t.is_empty()) {
            needed.push(top);
        }
    }
    for path in needed {
        assert!(repo_path(path).exists(), "{path} is not in the repository");
        assert!(
            allowed.contains(path),
            "{path} is needed by cargo but excluded by deploy/Dockerfile.dockerignore"
        );
    }
    assert!(!allowed.contains("target"), "never send target/ as context");
}

// ---------------------------------------------------------------------------
// The real binary

/// A running `scopegate`; killed when dropped (also when an assertion fails).
struct Gateway {
    child: Child,
    log: tempfile::NamedTempFile,
    _config: tempfile::NamedTempFile,
}

impl Gateway {
    fn start(routes: &Value, env: &BTreeMap<String, String>) -> Gateway {
        let config = write_config(&serde_yaml::to_string(routes).unwrap());
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(SCOPEGATE)
            .args(["run", "--config"])
            .arg(config.path())
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start scopegate");
        Gateway {
            child,
            log,
            _config: config,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GETs `path` on `addr` until it answers `status` (the process starts in
    /// the background, so connecting is retried); fails after 15 seconds.
    async fn wait_for(&mut self, addr: SocketAddr, path: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!(
                    "scopegate exited ({exit}) before {path} answered:\n{}",
                    self.log()
                );
            }
            match raw_request(addr, build_request("GET", addr, path, &[], b"")).await {
                Ok(r) if r.status == status => return,
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "GET {path} on {addr} never answered {status} (last: {last}); log:\n{}",
            self.log()
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

fn scopegate_check(name: &str, text: &str, env: &BTreeMap<String, String>) {
    let config = write_config(text);
    let out = Command::new(SCOPEGATE)
        .args(["check", "--config"])
        .arg(config.path())
        .env_clear()
        .envs(env)
        .output()
        .expect("run scopegate check");
    assert!(
        out.status.success(),
        "scopegate check rejects {name} ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_route_tables_pass_scopegate_check() {
    let m = Manifests::load("kubernetes");
    let pod = GatewayPod::find(&m, "orders-api");
    scopegate_check("the sidecar ConfigMap", &pod.routes_text, &pod.env);

    let m = Manifests::load("kubernetes/forward-auth");
    let pod = GatewayPod::find(&m, "scopegate");
    scopegate_check("the forward-auth ConfigMap", &pod.routes_text, &pod.env);

    let compose = &documents(&deploy_path("docker-compose.yml"))[0];
    let env = compose_env(at(compose, "services.gateway"));
    scopegate_check(
        "deploy/compose/routes.yaml",
        &read(&deploy_path("compose/routes.yaml")),
        &env,
    );
}

/// A free loopback address (bound, then released for the child to take).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The pod's routes with every listener moved to a free loopback port and the
/// issuers replaced by the test IdP; returns (routes, env, audience).
fn on_loopback(pod: &GatewayPod<'_>, idp: &Idp) -> (Value, BTreeMap<String, String>, String) {
    let mut routes = pod.routes.clone();
    let mut env = pod.env.clone();
    let mut audience = None;
    for issuer in routes
        .get_mut("issuers")
        .and_then(Value::as_sequence_mut)
        .expect("issuers")
    {
        set(issuer, "issuer", idp.issuer());
        let first = str_at(issuer, "audiences.0");
        audience.get_or_insert_with(|| expand(first, &env));
    }
    set(&mut routes, "listen", free_addr().to_string());
    set(&mut routes, "admin_listen", free_addr().to_string());
    env.insert("SCOPEGATE_LOG".into(), "info".into());
    (routes, env, audience.expect("an issuer"))
}

fn assert_status(r: &RawResponse, status: u16, what: &str, gateway: &Gateway) {
    assert_eq!(
        r.status,
        status,
        "{what}: {} {:?}; log:\n{}",
        r.status,
        r.text(),
        gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_config_serves_probes_and_proxies_to_the_app() {
    let m = Manifests::load("kubernetes");
    let pod = GatewayPod::find(&m, "orders-api");
    let key = TestKey::generate(Alg::ES256, "deploy-test");
    let idp = Idp::start_with_keys(&[&key]).await;
    let app = Upstream::start().await;

    let (mut routes, env, audience) = on_loopback(&pod, &idp);
    set(&mut routes, "upstream", app.url());
    let listen = addr(str_at(&routes, "listen"));
    let admin = addr(str_at(&routes, "admin_listen"));
    let mut gateway = Gateway::start(&routes, &env);

    // The probe paths of deployment.yaml, on the admin listener.
    let liveness = str_at(pod.container, "livenessProbe.httpGet.path");
    let readiness = str_at(pod.container, "readinessProbe.httpGet.path");
    gateway.wait_for(admin, liveness, 200).await;
    gateway.wait_for(admin, readiness, 200).await;
    let metrics = support::get(admin, "/metrics", &[]).await;
    assert_status(&metrics, 200, "GET /metrics", &gateway);

    // Requests through the Service's port reach the app only when authorized.
    let denied = support::get(listen, "/api/messages", &[]).await;
    assert_status(&denied, 401, "no token", &gateway);
    assert_eq!(app.count(), 0, "a rejected request must not reach the app");

    let claims = valid_claims(
        &idp.issuer(),
        audience.as_str(),
        "message",
        Duration::from_secs(300),
    );
    let bearer = format!("Bearer {}", key.sign(&claims));
    let allowed = support::get(listen, "/api/messages", &[("Authorization", &bearer)]).await;
    assert_status(&allowed, 200, "token with scope message", &gateway);
    let seen = app.last().expect("the app saw the request");
    assert_eq!(seen.path_and_query, "/api/messages");
    assert_eq!(seen.header("x-auth-subject"), Some("user-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_config_answers_ingress_nginx() {
    let m = Manifests::load("kubernetes/forward-auth");
    let pod = GatewayPod::find(&m, "scopegate");
    let key = TestKey::generate(Alg::ES256, "deploy-test");
    let idp = Idp::start_with_keys(&[&key]).await;

    let (mut routes, env, audience) = on_loopback(&pod, &idp);
    let verify_addr = free_addr();
    let forward_auth = routes
        .get_mut("forward_auth")
        .expect("forward_auth section");
    set(forward_auth, "listen", verify_addr.to_string());
    // Here the "ingress controller" is this test, on loopback.
    forward_auth
        .get_mut("trusted_peers")
        .and_then(Value::as_sequence_mut)
        .expect("trusted_peers")
        .push("127.0.0.1/32".into());
    let admin = addr(str_at(&routes, "admin_listen"));
    let mut gateway = Gateway::start(&routes, &env);
    gateway.wait_for(admin, "/healthz", 200).await;
    gateway.wait_for(admin, "/readyz", 200).await;

    // What ingress-nginx sends for `GET /api/messages?page=2`: its own
    // X-Original-URL / X-Original-Method plus the auth-proxy-set-headers
    // ConfigMap's headers, nginx variables expanded.
    let ingress = m.of_kind("Ingress").into_iter().next().unwrap();
    let cm = at(ingress, "metadata.annotations")
        .get("nginx.ingress.kubernetes.io/auth-proxy-set-headers")
        .and_then(Value::as_str)
        .unwrap();
    let (ns, name) = cm.split_once('/').unwrap();
    let extra: Vec<(String, String)> = at(m.one("ConfigMap", name, Some(ns)), "data")
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap()
                .replace("$request_uri", "/api/messages?page=2")
                .replace("$request_method", "GET");
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect();
    let verify = |token: Option<String>| {
        let mut headers: Vec<(String, String)> = vec![
            (
                "X-Original-URL".into(),
                "http://orders.example.com/api/messages?page=2".into(),
            ),
            ("X-Original-Method".into(), "GET".into()),
        ];
        headers.extend(extra.iter().cloned());
        if let Some(t) = token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            support::get(verify_addr, "/verify", &headers).await
        }
    };

    let r = verify(None).await;
    assert_status(&r, 401, "/verify without a token", &gateway);

    let claims = valid_claims(
        &idp.issuer(),
        audience.as_str(),
        "other",
        Duration::from_secs(300),
    );
    let r = verify(Some(key.sign(&claims))).await;
    assert_status(&r, 403, "/verify, token without scope message", &gateway);

    let claims = valid_claims(
        &idp.issuer(),
        audience.as_str(),
        "message",
        Duration::from_secs(300),
    );
    let r = verify(Some(key.sign(&claims))).await;
    assert_status(&r, 200, "/verify, token with scope message", &gateway);
    // The headers the Ingress's auth-response-headers copies upstream.
    for header in identity_headers(&pod.routes) {
        assert!(r.header(&header).is_some(), "/verify answer lacks {header}");
    }
    assert_eq!(r.header("x-auth-subject"), Some("user-123"));
}

#[test]
fn helpers_read_what_they_claim() {
    // The small parsers the checks above rely on.
    assert_eq!(duration_secs("30s"), 30);
    assert_eq!(duration_secs("2m"), 120);
    assert_eq!(duration_secs("1500ms"), 2);
    assert_eq!(
        env_references("a: ${A}\nb: [\"${B_2}\"]"),
        BTreeSet::from(["A".to_owned(), "B_2".to_owned()])
    );
    let env = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
    assert_eq!(expand("${A}-${A}", &env), "x-x");
    let v: Value = serde_yaml::from_str("a: {b: [1, {c: d}]}").unwrap();
    assert_eq!(at(&v, "a.b.1.c"), &Value::from("d"));
    assert!(at(&v, "a.x.y").is_null());
    assert_eq!(addr("0.0.0.0:1").ip(), IpAddr::from([0, 0, 0, 0]));
}
