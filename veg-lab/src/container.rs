//! Instances run from the image (`veg lab up --image IMAGE`): each of a pod's containers becomes a podman container
//! joined to the instance's network namespace, with the command, capabilities, no-new-privileges and hostPath
//! mounts of the Deployment's container, never privileged, so that the lab shows the image works with what the
//! Deployment grants and no more.

use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, PodSpec};

/// Options every podman run needs on these machines: runc (crun refuses cgroups in hybrid mode) and limits
/// within the host's (podman's defaults exceed them, and the process may not raise its own).
pub const RUNTIME_OPTIONS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=8192:8192",
    "--ulimit",
    "nproc=8192:8192",
];

/// The lab's containers carry this label, with the lab's prefix as value.
const LABEL: &str = "veg-lab";

/// Where the lab remembers the image its instances run from (no file: they run the veg binary directly).
fn image_file(lab_dir: &Path) -> std::path::PathBuf {
    lab_dir.join("image")
}

pub fn set_image(lab_dir: &Path, image: Option<&str>) -> anyhow::Result<()> {
    match image {
        Some(image) => std::fs::write(image_file(lab_dir), image)
            .with_context(|| format!("writing {}", image_file(lab_dir).display())),
        None => Ok(()),
    }
}

pub fn image(lab_dir: &Path) -> Option<String> {
    std::fs::read_to_string(image_file(lab_dir))
        .ok()
        .map(|image| image.trim().to_owned())
        .filter(|image| !image.is_empty())
}

/// What a pod container is allowed, as flags: its capabilities and nothing else, no privilege escalation, and
/// its hostPath volumes mounted where it asks.
fn security_and_mounts(container: &Container, pod: &PodSpec) -> Vec<String> {
    let mut flags = vec!["--cap-drop".to_owned(), "all".to_owned()];
    let security = container.security_context.as_ref();
    let added: Vec<String> = security
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    if !added.is_empty() {
        flags.extend(["--cap-add".to_owned(), added.join(",")]);
    }
    if security.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        flags.extend(["--security-opt".to_owned(), "no-new-privileges".to_owned()]);
    }
    // Kubernetes runs a container without a seccomp profile unless it (or its pod) asks for one.
    let profile = security
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod.security_context.as_ref()?.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    if matches!(profile, None | Some("Unconfined")) {
        flags.extend(["--security-opt".to_owned(), "seccomp=unconfined".to_owned()]);
    }
    for mount in container.volume_mounts.iter().flatten() {
        let host_path = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.host_path.as_ref());
        if let Some(host) = host_path {
            flags.extend([
                "--volume".to_owned(),
                format!("{}:{}", host.path, mount.mount_path),
            ]);
        }
    }
    flags
}

/// Where and as what a pod's container runs.
pub struct Placement<'a> {
    pub image: &'a str,
    /// The lab's prefix, for the label that finds its containers.
    pub lab_prefix: &'a str,
    /// The container's name, unique on the host.
    pub name: &'a str,
    /// The pod's name, which its containers see as their host name.
    pub hostname: &'a str,
    /// The instance's network namespace.
    pub netns: &'a str,
}

/// `podman run` arguments for `container` of `pod` placed as `at`, with `args` instead of the container's own
/// (the kubelet's substitutions made).
pub fn run_args(
    at: &Placement,
    pod: &PodSpec,
    container: &Container,
    args: &[String],
) -> Vec<String> {
    let Placement {
        image,
        lab_prefix: prefix,
        name,
        hostname,
        netns,
    } = *at;
    let mut run: Vec<String> = ["run", "--rm", "--name", name, "--hostname", hostname]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run.extend(RUNTIME_OPTIONS.iter().map(|s| s.to_string()));
    run.extend([
        "--label".to_owned(),
        format!("{LABEL}={prefix}"),
        "--network".to_owned(),
        format!("ns:/var/run/netns/{netns}"),
        // The agent's lock and BFD control socket, so that `veg bfd status` on the lab's host reaches it (a pod
        // keeps them to itself; nothing else is shared).
        "--volume".to_owned(),
        "/run/veg:/run/veg".to_owned(),
    ]);
    run.extend(security_and_mounts(container, pod));
    if let Some(command) = container.command.as_ref().and_then(|c| c.first()) {
        run.extend(["--entrypoint".to_owned(), command.clone()]);
    }
    run.push(image.to_owned());
    run.extend(args.iter().cloned());
    run
}

/// Kill a container of the lab at once, as a failing node would (nothing if it is gone already).
pub fn kill(name: &str) {
    let _ = std::process::Command::new("podman")
        .args(["kill", "--signal", "KILL", name])
        .output();
}

/// Remove a container of the lab, running or not.
pub fn remove(name: &str) {
    let _ = std::process::Command::new("podman")
        .args(["rm", "--force", "--time", "0", name])
        .output();
}

/// Remove every container of the lab with this prefix (what a lab that went down uncleanly left).
pub fn remove_all(prefix: &str) {
    let listed = std::process::Command::new("podman")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label={LABEL}={prefix}"),
        ])
        .output();
    let Ok(listed) = listed else {
        return; // No podman: no containers either.
    };
    for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
        remove(id);
    }
}
