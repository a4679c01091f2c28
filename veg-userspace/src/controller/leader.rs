//! Leader election with a coordination.k8s.io Lease, as client-go does it, so that two controller replicas never
//! fight: the holder renews the lease; another replica takes it only after seeing it unchanged for a whole lease
//! duration by its own clock (so clock skew between nodes does not matter). Writes carry the resourceVersion
//! read, so two replicas racing for an expired lease cannot both win.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease record last seen (holder and renew time) and when we first saw it so.
    observed: Option<(String, Instant)>,
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn record(spec: &LeaseSpec) -> String {
    format!(
        "{:?}|{:?}",
        spec.holder_identity,
        spec.renew_time.as_ref().map(|t| t.0)
    )
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: None,
        }
    }

    /// How often the holder should call `step`: well within the lease duration.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Acquire or renew the lease once. Returns whether we hold it now.
    pub async fn step(&mut self) -> Result<bool, kube::Error> {
        let current = match self.api.get_opt(&self.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let seen = record(&spec);
        let since = match &self.observed {
            Some((record, since)) if *record == seen => *since,
            _ => Instant::now(),
        };
        self.observed = Some((seen, since));
        let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = since.elapsed() >= self.duration;
        if !ours && !vacant && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut lease = current;
        lease.spec = Some(self.spec(acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let spec = written.spec.unwrap_or_default();
                self.observed = Some((record(&spec), Instant::now()));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
