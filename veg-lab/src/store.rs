//! The lab's "API server": the resources a user would `kubectl apply` (VpcEgressGateway, Vpc, Subnet), one YAML
//! file each under <lab>/resources/, and the gateways' status, written by the lab's controller under
//! <lab>/status/. Writes go to a temporary file first and are renamed into place, so a reader never sees half a
//! file. Spec and status live apart, so that `veg lab apply` and the controller never overwrite each other.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use kube::ResourceExt;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use veg_userspace::crd::{
    gateway::{VpcEgressGateway, VpcEgressGatewayStatus},
    network::{Subnet, Vpc},
};

pub struct Store {
    root: PathBuf,
}

const KINDS: [&str; 3] = ["VpcEgressGateway", "Vpc", "Subnet"];

/// A resource named by kind, namespace ("" when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Name {
    fn file(&self) -> String {
        format!("{}.{}.{}.yaml", self.kind, self.namespace, self.name)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.namespace.as_str() {
            "" => write!(f, "{} {}", self.kind, self.name),
            ns => write!(f, "{} {ns}/{}", self.kind, self.name),
        }
    }
}

/// Write `text` to `path` through a temporary file beside it (`path` with the extension `tmp`) and a rename, so
/// that a reader never sees a half-written file.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

/// The resources of a manifest, each checked: a kind the lab knows, a name, and content that parses as that kind.
/// A manifest holds any number of YAML documents (or JSON), and a document may be a `kind: List` of resources,
/// as `kubectl apply -f` takes them; an empty file holds none.
pub fn parse_manifest(yaml: &str) -> anyhow::Result<Vec<(Name, Value)>> {
    let mut resources = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(document).context("the file is not valid YAML")?;
        if value.is_null() {
            continue;
        }
        if value["kind"] == "List" {
            let items = value["items"]
                .as_array()
                .with_context(|| format!("document {} is a List without items", index + 1))?;
            for item in items {
                resources.push(checked(item.clone())?);
            }
        } else {
            resources.push(checked(value)?);
        }
    }
    Ok(resources)
}

/// One resource, named and checked.
fn checked(value: Value) -> anyhow::Result<(Name, Value)> {
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    if !KINDS.contains(&kind.as_str()) {
        bail!(
            "kind {kind:?} is not served by the lab: it knows {} (and List)",
            KINDS.join(", ")
        );
    }
    let name = value["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .with_context(|| format!("a {kind} without metadata.name"))?
        .to_owned();
    let namespace = match kind.as_str() {
        "VpcEgressGateway" => value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        _ => String::new(),
    };
    let parsed = match kind.as_str() {
        "VpcEgressGateway" => serde_json::from_value::<VpcEgressGateway>(value.clone()).map(drop),
        "Vpc" => serde_json::from_value::<Vpc>(value.clone()).map(drop),
        _ => serde_json::from_value::<Subnet>(value.clone()).map(drop),
    };
    parsed.with_context(|| format!("{kind} {name:?} is not valid"))?;
    Ok((
        Name {
            kind,
            namespace,
            name,
        },
        value,
    ))
}

impl Store {
    pub fn new(lab_dir: &Path) -> Store {
        Store {
            root: lab_dir.to_owned(),
        }
    }

    fn resources(&self) -> PathBuf {
        self.root.join("resources")
    }

    fn statuses(&self) -> PathBuf {
        self.root.join("status")
    }

    /// Create or replace the resource (its spec: a status in the document is ignored, as the API server does for
    /// a resource with a status subresource).
    pub fn put(&self, name: &Name, mut value: Value) -> anyhow::Result<()> {
        fs::create_dir_all(self.resources())?;
        if name.kind == "VpcEgressGateway" {
            if let Some(object) = value.as_object_mut() {
                object.remove("status");
            }
            value["metadata"]["namespace"] = Value::from(name.namespace.clone());
            if value["metadata"]["creationTimestamp"].is_null() {
                let created = self.get_value(name).and_then(|v| {
                    v["metadata"]["creationTimestamp"]
                        .as_str()
                        .map(str::to_owned)
                });
                let now = k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                value["metadata"]["creationTimestamp"] = Value::from(created.unwrap_or(now));
            }
        }
        write_atomically(
            &self.resources().join(name.file()),
            &serde_yaml::to_string(&value)?,
        )
    }

    fn get_value(&self, name: &Name) -> Option<Value> {
        let text = fs::read_to_string(self.resources().join(name.file())).ok()?;
        serde_yaml::from_str(&text).ok()
    }

    /// Remove the resource; false when it was not there.
    pub fn remove(&self, name: &Name) -> anyhow::Result<bool> {
        match fs::remove_file(self.resources().join(name.file())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).context(format!("removing {name}")),
        }
    }

    fn list<K: DeserializeOwned>(&self, kind: &str) -> Vec<K> {
        let Ok(entries) = fs::read_dir(self.resources()) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{kind}.")) && f.ends_with(".yaml"))
            })
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| serde_yaml::from_str(&fs::read_to_string(p).ok()?).ok())
            .collect()
    }

    pub fn vpcs(&self) -> Vec<Vpc> {
        self.list("Vpc")
    }

    pub fn subnets(&self) -> Vec<Subnet> {
        self.list("Subnet")
    }

    /// The gateways, each with the status the controller last wrote.
    pub fn gateways(&self) -> Vec<VpcEgressGateway> {
        let mut gateways: Vec<VpcEgressGateway> = self.list("VpcEgressGateway");
        for gateway in &mut gateways {
            gateway.status = self.status_of(
                &gateway.namespace().unwrap_or_default(),
                &gateway.name_any(),
            );
        }
        gateways
    }

    pub fn gateway(&self, namespace: &str, name: &str) -> Option<VpcEgressGateway> {
        self.gateways()
            .into_iter()
            .find(|g| g.name_any() == name && g.namespace().as_deref() == Some(namespace))
    }

    fn status_file(&self, namespace: &str, name: &str) -> PathBuf {
        self.statuses().join(format!("{namespace}.{name}.yaml"))
    }

    pub fn status_of(&self, namespace: &str, name: &str) -> Option<VpcEgressGatewayStatus> {
        serde_yaml::from_str(&fs::read_to_string(self.status_file(namespace, name)).ok()?).ok()
    }

    pub fn write_status(
        &self,
        namespace: &str,
        name: &str,
        status: &VpcEgressGatewayStatus,
    ) -> anyhow::Result<()> {
        fs::create_dir_all(self.statuses())?;
        write_atomically(
            &self.status_file(namespace, name),
            &serde_yaml::to_string(status)?,
        )
    }

    /// Every gateway (namespace/name) that has a status.
    pub fn status_names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.statuses()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| {
                let (namespace, name) = f.strip_suffix(".yaml")?.split_once('.')?;
                Some(format!("{namespace}/{name}"))
            })
            .collect()
    }

    pub fn remove_status(&self, namespace: &str, name: &str) {
        let _ = fs::remove_file(self.status_file(namespace, name));
    }

    /// Set spec.replicas, as `kubectl scale` does through the scale subresource.
    pub fn scale(&self, namespace: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
        let key = Name {
            kind: "VpcEgressGateway".into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut value = self.get_value(&key).with_context(|| {
            format!("no VpcEgressGateway {namespace}/{name} in the lab (`veg lab get veg`)")
        })?;
        if !(0..=10).contains(&replicas) {
            bail!("--replicas {replicas}: a gateway has 0 to 10 replicas");
        }
        value["spec"]["replicas"] = Value::from(replicas);
        self.put(&key, value)
    }
}

/// Serialize a resource for the store (tests and the lab's built-in objects).
pub fn to_value<K: Serialize>(object: &K) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(object)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "{kind: VpcEgressGateway, metadata: {name: g1}, spec: {externalSubnet: ext, policies: [{snat: true, ipBlocks: [10.0.0.1]}]}}";
    const VPC: &str = "{kind: Vpc, metadata: {name: vpc1}, spec: {}}";

    fn names(yaml: &str) -> Vec<String> {
        parse_manifest(yaml)
            .unwrap()
            .iter()
            .map(|(name, _)| name.to_string())
            .collect()
    }

    #[test]
    fn a_manifest_holds_documents_and_lists_of_any_number() {
        assert_eq!(
            names(&format!("{VPC}\n---\n{GATEWAY}\n")),
            ["Vpc vpc1", "VpcEgressGateway default/g1"]
        );
        assert_eq!(
            names(&format!(
                "apiVersion: v1\nkind: List\nitems: [{VPC}, {GATEWAY}]\n---\n{}\n",
                GATEWAY.replace("g1", "g2")
            )),
            [
                "Vpc vpc1",
                "VpcEgressGateway default/g1",
                "VpcEgressGateway default/g2"
            ]
        );
        assert!(names("---\n# nothing\n").is_empty());
    }

    #[test]
    fn one_bad_resource_refuses_the_whole_manifest() {
        let error = |yaml: &str| format!("{:#}", parse_manifest(yaml).unwrap_err());
        assert!(
            error(&format!(
                "kind: List\nitems: [{VPC}, {{kind: Pod, metadata: {{name: p}}}}]\n"
            ))
            .contains("kind \"Pod\" is not served by the lab"),
        );
        assert!(error("kind: List\n").contains("List without items"));
        assert!(
            error(&GATEWAY.replace("externalSubnet: ext, ", ""))
                .contains("VpcEgressGateway \"g1\" is not valid")
        );
    }
}
