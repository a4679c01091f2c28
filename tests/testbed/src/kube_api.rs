//! A Kubernetes API server in memory, behind kube-rs's mocked transport (tower-test), for controller tests: no API
//! server can be installed here. It keeps objects by their URL (group, resource, namespace, name) and serves what
//! a controller uses: get, list (with label selectors), watch (events from the next change on), create, replace
//! (with resourceVersion conflicts), the four kinds of patch (JSON, merge, strategic merge as merge, server-side
//! apply as merge-or-create), the status subresource, and delete honouring finalizers and owner references
//! (garbage collection of dependents). It records every write that changed something, so a test can assert that
//! a reconcile changed nothing.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use kube::client::Body;
use serde_json::{Value, json};

/// Where an object lives: API group ("" for core), resource (plural), namespace ("" when cluster-scoped), name.
type Key = (String, String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    writes: Vec<String>,
    next_version: u64,
    watchers: Vec<Watcher>,
}

/// An open watch: what it watches, and where its events go (one JSON line each).
struct Watcher {
    group: String,
    resource: String,
    namespace: String,
    selector: Option<String>,
    events: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl Watcher {
    fn sees(&self, key: &Key, object: &Value) -> bool {
        key.0 == self.group
            && key.1 == self.resource
            && (self.namespace.is_empty() || key.2 == self.namespace)
            && self
                .selector
                .as_deref()
                .is_none_or(|s| selects(s, &object["metadata"]["labels"]))
    }
}

/// The response body: one JSON document, or a watch's stream of events.
type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// The server; clones share it.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// What a request addresses.
#[derive(Debug)]
struct Target {
    group: String,
    resource: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let owned = |s: Option<&&str>| s.map(|s| s.to_string());
    match rest {
        // A namespaced resource: namespaces/<ns>/<resource>[/<name>[/<sub>]].
        ["namespaces", namespace, resource, more @ ..] => Some(Target {
            group,
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: owned(more.first()),
            subresource: owned(more.get(1)),
        }),
        [resource, more @ ..] => Some(Target {
            group,
            resource: resource.to_string(),
            namespace: String::new(),
            name: owned(more.first()),
            subresource: owned(more.get(1)),
        }),
        [] => None,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// Equality-based and existence label selectors: "a=b,c!=d,e,!f".
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            label(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            label(k).is_none()
        } else {
            label(term).is_some()
        }
    })
}

fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code.as_u16() });
    (code, body)
}

/// RFC 3339 seconds, as the API server writes timestamps.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The API server's JSON patch (evanphx/json-patch) passes a test for null on a missing path; json_patch does not.
fn kubernetes_test_semantics(object: &Value, patch: Value) -> Value {
    let Value::Array(operations) = patch else {
        return patch;
    };
    let kept = operations.into_iter().filter(|op| {
        let tests_null_on_missing = op["op"] == "test"
            && op["value"].is_null()
            && op["path"]
                .as_str()
                .is_some_and(|p| object.pointer(p).is_none());
        !tests_null_on_missing
    });
    Value::Array(kept.collect())
}

impl State {
    /// Tell the watchers what a request changed, comparing the objects before and after it.
    fn notify(&mut self, before: &BTreeMap<Key, Value>) {
        let mut events = Vec::new();
        for (key, object) in &self.objects {
            match before.get(key) {
                None => events.push((key, "ADDED", object)),
                Some(old) if old != object => events.push((key, "MODIFIED", object)),
                Some(_) => {}
            }
        }
        for (key, object) in before {
            if !self.objects.contains_key(key) {
                events.push((key, "DELETED", object));
            }
        }
        for (key, type_, object) in events {
            let line = format!("{}\n", json!({ "type": type_, "object": object }));
            for watcher in self.watchers.iter().filter(|w| w.sees(key, object)) {
                let _ = watcher.events.send(Bytes::from(line.clone()));
            }
        }
        self.watchers.retain(|w| !w.events.is_closed());
    }

    /// Open a watch on the collection `target` names; events start with the next change.
    fn watch(&mut self, target: &Target, query: &str) -> ResponseBody {
        let (events, stream) = tokio::sync::mpsc::unbounded_channel();
        self.watchers.push(Watcher {
            group: target.group.clone(),
            resource: target.resource.clone(),
            namespace: target.namespace.clone(),
            selector: query_param(query, "labelSelector"),
            events,
        });
        let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(stream)
            .map(|b| Ok(Frame::data(b)));
        StreamBody::new(frames).boxed_unsync()
    }

    fn bump(&mut self, object: &mut Value) {
        self.next_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
    }

    fn create(&mut self, key: Key, mut object: Value) -> (StatusCode, Value) {
        if self.objects.contains_key(&key) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} {:?} already exists", key.1, key.3),
            );
        }
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.3);
        if !key.2.is_empty() {
            meta["namespace"] = json!(key.2);
        }
        meta["uid"] = json!(format!("uid-{}-{}", key.1, self.next_version + 1));
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        self.bump(&mut object);
        self.objects.insert(key, object.clone());
        (StatusCode::CREATED, object)
    }

    /// Store `new` in place of `old`: the status subresource changes only status, the main resource everything but
    /// status; generation counts spec changes; an object being deleted goes once its finalizers are gone.
    fn update(
        &mut self,
        key: Key,
        old: Value,
        mut new: Value,
        subresource: Option<&str>,
    ) -> (StatusCode, Value) {
        if subresource == Some("status") {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = old.clone();
            new["status"] = status;
        } else if let Some(status) = old.get("status") {
            new["status"] = status.clone();
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "name",
            "namespace",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => drop(new["metadata"].as_object_mut().map(|m| m.remove(field))),
            }
        }
        // A write that changes nothing is no write: the version stays, as on a real API server.
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        new["metadata"]["generation"] = old["metadata"]["generation"].clone();
        if new == old {
            return (StatusCode::OK, old);
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let spec_changed = old.get("spec") != new.get("spec");
        new["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
        self.bump(&mut new);
        let finalized = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if new["metadata"].get("deletionTimestamp").is_some() && finalized {
            self.remove(&key);
        } else {
            self.objects.insert(key, new.clone());
        }
        (StatusCode::OK, new)
    }

    /// Remove an object and, as the garbage collector does, every object it owns.
    fn remove(&mut self, key: &Key) {
        let Some(object) = self.objects.remove(key) else {
            return;
        };
        let uid = object["metadata"]["uid"].clone();
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            self.remove(&key);
        }
    }

    fn list(&self, target: &Target, selector: Option<&str>) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((g, r, ns, _), _)| {
                *g == target.group
                    && *r == target.resource
                    && (target.namespace.is_empty() || *ns == target.namespace)
            })
            .filter(|(_, o)| selector.is_none_or(|s| selects(s, &o["metadata"]["labels"])))
            .map(|(_, o)| o.clone())
            .collect();
        json!({ "apiVersion": "v1", "kind": "List",
                "metadata": { "resourceVersion": self.next_version.to_string() }, "items": items })
    }

    // Long because it is one request router: each arm is the API server's answer to one kind of request, and they
    // read best side by side.
    fn serve(
        &mut self,
        method: &Method,
        target: Target,
        query: &str,
        content_type: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let Some(name) = target.name.clone().or_else(|| {
            (*method == Method::POST).then(|| {
                parsed.as_ref()?["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
            })?
        }) else {
            if *method == Method::GET {
                return (
                    StatusCode::OK,
                    self.list(&target, query_param(query, "labelSelector").as_deref()),
                );
            }
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} on a collection"),
            );
        };
        let key: Key = (
            target.group.clone(),
            target.resource.clone(),
            target.namespace.clone(),
            name.clone(),
        );
        let current = self.objects.get(&key).cloned();
        let before = current.clone();
        let not_found = || {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name:?} not found", target.resource),
            )
        };
        let write = format!(
            "{method} {}/{}/{}{}",
            target.resource,
            target.namespace,
            name,
            target
                .subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        );
        let stored = key.clone();
        let result = match (method.clone(), current) {
            (Method::GET, Some(object)) => return (StatusCode::OK, object),
            (Method::GET, None) => return not_found(),
            (Method::POST, _) => match parsed {
                Some(object) => self.create(key, object),
                None => status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not JSON".into(),
                ),
            },
            (Method::PUT, Some(old)) => {
                let new = parsed.unwrap_or(Value::Null);
                let expected = new["metadata"]["resourceVersion"].as_str();
                if expected.is_some_and(|v| Some(v) != old["metadata"]["resourceVersion"].as_str())
                {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("the object {name:?} has been modified"),
                    );
                }
                self.update(key, old, new, target.subresource.as_deref())
            }
            (Method::PUT, None) => return not_found(),
            (Method::PATCH, current) => {
                let patch = parsed.unwrap_or(Value::Null);
                let apply = content_type.starts_with("application/apply-patch");
                match (current, apply) {
                    (None, true) => self.create(key, patch),
                    (None, false) => return not_found(),
                    (Some(old), _) => {
                        let mut new = old.clone();
                        if content_type.starts_with("application/json-patch") {
                            let patch = kubernetes_test_semantics(&old, patch);
                            let operations: json_patch::Patch = match serde_json::from_value(patch)
                            {
                                Ok(p) => p,
                                Err(e) => {
                                    return status(
                                        StatusCode::BAD_REQUEST,
                                        "BadRequest",
                                        e.to_string(),
                                    );
                                }
                            };
                            if let Err(e) = json_patch::patch(&mut new, &operations) {
                                return status(
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    "Invalid",
                                    e.to_string(),
                                );
                            }
                        } else {
                            json_patch::merge(&mut new, &patch);
                        }
                        self.update(key, old, new, target.subresource.as_deref())
                    }
                }
            }
            (Method::DELETE, Some(mut object)) => {
                let finalizers = object["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    if object["metadata"].get("deletionTimestamp").is_none() {
                        object["metadata"]["deletionTimestamp"] = json!(now());
                        self.bump(&mut object);
                        self.objects.insert(key, object.clone());
                    }
                } else {
                    self.remove(&key);
                }
                (StatusCode::OK, object)
            }
            (Method::DELETE, None) => return not_found(),
            (other, _) => {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{other} is not served"),
                );
            }
        };
        if result.0.is_success() && self.objects.get(&stored) != before.as_ref() {
            self.writes.push(write);
        }
        result
    }
}

impl FakeApi {
    /// Start serving; the client talks to this server only. Call inside a tokio runtime.
    pub fn start() -> (kube::Client, FakeApi) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let header = |name| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v: &http::HeaderValue| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let content_type = header(http::header::CONTENT_TYPE);
                let query = parts.uri.query().unwrap_or("").to_owned();
                let mut state = server.state.lock().unwrap();
                let (code, body) = match parse_path(parts.uri.path()) {
                    Some(target)
                        if target.name.is_none()
                            && query_param(&query, "watch").as_deref() == Some("true") =>
                    {
                        (StatusCode::OK, state.watch(&target, &query))
                    }
                    Some(target) => {
                        let before = state.objects.clone();
                        let (code, value) =
                            state.serve(&parts.method, target, &query, &content_type, &body);
                        state.notify(&before);
                        (
                            code,
                            Full::new(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
                                .boxed_unsync(),
                        )
                    }
                    None => {
                        let (code, value) = status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("no such path {}", parts.uri.path()),
                        );
                        (
                            code,
                            Full::new(Bytes::from(value.to_string())).boxed_unsync(),
                        )
                    }
                };
                drop(state);
                let response = Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .expect("a valid response");
                respond.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), api)
    }

    /// The object at group/resource/namespace/name, as stored.
    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (group.into(), resource.into(), namespace.into(), name.into());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every write that changed an object so far, as "METHOD resource/namespace/name[/subresource]".
    pub fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_objects() {
        let t = parse_path("/apis/apps/v1/namespaces/ns1/deployments/gw").unwrap();
        assert_eq!(
            (
                t.group.as_str(),
                t.resource.as_str(),
                t.namespace.as_str(),
                t.name.as_deref()
            ),
            ("apps", "deployments", "ns1", Some("gw"))
        );
        let t = parse_path("/api/v1/namespaces/ns1").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace.as_str(), t.name.as_deref()),
            ("namespaces", "", Some("ns1"))
        );
        let t =
            parse_path("/apis/kubeovn.io/v1/namespaces/ns1/vpc-egress-gateways/g/status").unwrap();
        assert_eq!(
            (t.name.as_deref(), t.subresource.as_deref()),
            (Some("g"), Some("status"))
        );
        let t = parse_path("/api/v1/pods").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace.as_str(), t.name),
            ("pods", "", None)
        );
    }

    #[test]
    fn label_selectors_select() {
        let labels = json!({ "app": "web", "tier": "front" });
        assert!(selects("app=web", &labels));
        assert!(selects("app==web,tier", &labels));
        assert!(!selects("app=db", &labels));
        assert!(selects("app!=db,!zone", &labels));
        assert!(!selects("zone", &labels));
        assert_eq!(percent_decode("app%3Dweb%2Cx%2Fy"), "app=web,x/y");
    }
}
