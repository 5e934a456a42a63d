//! NetworkPolicy on this node, the agent's side: the cache of Pods, Namespaces and
//! NetworkPolicies the watches keep (watch.rs), this node's pods as the plugin's store records
//! them (namespace/name, address, host veth: known at ADD, before the kubelet posts the pod's
//! IP), and after each change the node's table made what the compiler says (policy/).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use super::watch::PolicyInput;
use crate::policy::compile::{compile, LocalPod};
use crate::policy::explain::View;
use crate::policy::model::PodKey;
use crate::policy::{holdback, nft};

/// The agent's view, shared with the health listener (`GET /policy`), which only reads it.
pub type SharedView = Arc<RwLock<View>>;

/// The cache, which kinds were listed once (`View::listed`: compiling before the policies are
/// known would lift nothing, before the namespaces would select too little), this node's pods
/// and what the table was last made (to skip an unchanged apply) live in the shared `View`;
/// only this loop writes it, so its own reads never wait on more than a reader.
pub struct PolicySync {
    view: SharedView,
    data_dir: PathBuf,
    /// The next sync applies even an unchanged Ruleset (a resync: the table may have been
    /// changed by hand), without logging it as a change.
    reapply: bool,
    /// When each change not yet in force arrived: the next successful sync observes each in
    /// the event-to-programmed histogram.
    waiting: Vec<Instant>,
    /// The node's nft, found once and kept: it remembers what our last apply wrote, so the
    /// next one neither lists the table first nor rewrites what did not change.
    nft: Option<nft::Nft>,
    /// The newest resourceVersion among the changes received, named by "policy applied" so a
    /// benchmark can tell which API events a sync included.
    through: Option<u64>,
}

impl PolicySync {
    pub fn new(data_dir: PathBuf, view: SharedView) -> PolicySync {
        PolicySync {
            view,
            data_dir,
            reapply: false,
            waiting: Vec::new(),
            through: None,
            nft: None,
        }
    }

    /// A panic elsewhere while holding the lock leaves the view as it was between two whole
    /// updates (each update is one call under one guard): still the best answer there is.
    fn read(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one input (an event at resourceVersion `version`, or a list) to the cache; true
    /// when enforcement may have changed.
    pub fn update(&mut self, input: PolicyInput, version: String) -> bool {
        let changed = self.apply_input(input);
        if changed {
            self.waiting.push(Instant::now());
        }
        // resourceVersions are opaque to clients, but every API server so far hands out etcd's
        // revision, a number: a non-number is simply not named.
        if let Ok(v) = version.parse::<u64>() {
            self.through = Some(self.through.map_or(v, |t| t.max(v)));
        }
        changed
    }

    fn apply_input(&mut self, input: PolicyInput) -> bool {
        let mut view = self.write();
        let View { cache, listed, .. } = &mut *view;
        match input {
            PolicyInput::Pods(all) => {
                // A list always counts: the first one may be what completes the inputs.
                listed[0] = true;
                cache.replace_pods(all);
                true
            }
            PolicyInput::Pod(p) => cache.upsert_pod(p),
            PolicyInput::PodGone(ns, name) => cache.delete_pod(&ns, &name),
            PolicyInput::Namespaces(all) => {
                // A list always counts: the first one may be what completes the inputs.
                listed[1] = true;
                cache.replace_namespaces(all);
                true
            }
            PolicyInput::Namespace(n) => cache.upsert_namespace(n),
            PolicyInput::NamespaceGone(name) => cache.delete_namespace(&name),
            PolicyInput::Policies(all) => {
                // A list always counts: the first one may be what completes the inputs.
                listed[2] = true;
                cache.replace_policies(all);
                true
            }
            PolicyInput::Policy(p) => cache.upsert_policy(p),
            PolicyInput::PolicyGone(ns, name) => cache.delete_policy(&ns, &name),
        }
    }

    /// This node's pods, from the plugin's store: every record that names its pod.
    fn local_pods(&self) -> Result<BTreeMap<PodKey, LocalPod>, String> {
        let pools = crate::ipam::scan::scan(&self.data_dir)
            .map_err(|e| format!("read the pod store {}: {}", self.data_dir.display(), e.msg))?;
        let mut out: BTreeMap<PodKey, LocalPod> = BTreeMap::new();
        for pool in pools {
            for found in pool.records {
                let r = found.record;
                let (Some(ns), Some(name)) = (r.pod_namespace, r.pod_name) else {
                    continue;
                };
                let pod = out.entry(PodKey::new(&ns, &name)).or_insert(LocalPod {
                    ifname: r.host_veth.clone(),
                    ips: Vec::new(),
                });
                pod.ips.push(r.ip);
            }
        }
        Ok(out)
    }

    /// Makes the node's table what the cache and the store say. `Ok(None)`: nothing to do
    /// (not every kind listed yet, or the same as last time); `Ok(Some(line))`: applied.
    pub fn sync(&mut self) -> Result<Option<String>, String> {
        let view = self.read();
        if view.listed.iter().any(|l| !l) {
            return Err(
                "waiting for the first list of pods, namespaces and networkpolicies".into(),
            );
        }
        // First, so that ADDs from now on hold new pods of a namespace that just got its first
        // policy back until the pods' rules exist (policy/holdback.rs).
        let with_policy: BTreeSet<String> =
            view.cache.policies().map(|p| p.namespace.clone()).collect();
        holdback::write_namespaces(&self.data_dir, &with_policy).map_err(|e| {
            format!(
                "write {}: {e}",
                self.data_dir.join(holdback::NAMESPACES_FILE).display()
            )
        })?;
        let local = self.local_pods()?;
        let started = Instant::now();
        let ruleset = compile(&view.cache, &local);
        let unchanged = view.applied.as_ref() == Some(&ruleset);
        drop(view);
        let reapply = std::mem::take(&mut self.reapply);
        if unchanged && !reapply {
            self.write().local = local;
            self.programmed();
            return Ok(None);
        }
        if self.nft.is_none() {
            self.nft = Some(nft::Nft::find().map_err(|e| e.to_string())?);
        }
        let nft = self.nft.as_ref().expect("found above");
        if reapply {
            nft.forget();
        }
        let applied = nft.apply(&ruleset).map_err(|e| e.to_string())?;
        let pods = [
            ruleset.pods.len(),
            ruleset.ingress.len(),
            ruleset.egress.len(),
        ];
        super::metrics::policy_applied(pods, &applied, started.elapsed());
        self.programmed();
        if unchanged {
            let mut view = self.write();
            view.applied = Some(ruleset);
            view.local = local;
            return Ok(None);
        }
        let line = format!(
            "policy applied: {} local pod(s), {} ingress- and {} egress-isolated, {} chain(s), {} set(s), {} rule(s), {} element(s) in {:.0} ms ({} ms of it nft){}",
            ruleset.pods.len(),
            ruleset.ingress.len(),
            ruleset.egress.len(),
            applied.chains,
            applied.sets,
            applied.rules,
            applied.elements,
            started.elapsed().as_secs_f64() * 1000.0,
            applied.took.as_millis(),
            match self.through {
                Some(v) => format!("; API changes through resourceVersion {v}"),
                None => String::new(),
            }
        );
        let mut view = self.write();
        view.applied = Some(ruleset);
        view.local = local;
        Ok(Some(line))
    }

    /// Every change received so far is in force now.
    fn programmed(&mut self) {
        let now = Instant::now();
        for arrived in self.waiting.drain(..) {
            super::metrics::POLICY_PROGRAMMED
                .observe_duration(&[], now.saturating_duration_since(arrived));
        }
    }

    /// After a failed apply the table may be anything: compare against nothing next time.
    pub fn forget_applied(&mut self) {
        self.write().applied = None;
    }

    /// The next sync re-applies the table even if nothing changed (resync repairs).
    pub fn reapply_next(&mut self) {
        self.reapply = true;
    }
}

/// `--network-policy=false`: no table of ours, and no namespace list telling ADD to hold pods
/// back. A node without nft has no table to remove.
pub fn disable(data_dir: &std::path::Path) {
    match std::fs::remove_file(data_dir.join(holdback::NAMESPACES_FILE)) {
        Ok(()) => crate::info!("NetworkPolicy enforcement off: ADD no longer holds pods back"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => crate::error!(
            "NetworkPolicy enforcement off, but {} stays: {e}; remove it, or ADD keeps holding back pods of the namespaces it lists",
            data_dir.join(holdback::NAMESPACES_FILE).display()
        ),
    }
    match nft::remove_table() {
        Ok(true) => crate::info!("NetworkPolicy enforcement off: table inet routed-cni removed"),
        Ok(false) => {}
        Err(e) => crate::debug!("NetworkPolicy enforcement off; removing our table: {e}"),
    }
}
