//! Putting configurations in force: the one reload path (SIGHUP, file
//! changes, control requests, add/remove-host) and DNS updates, each
//! checked whole before the kernel is touched and reported the same way
//! when it fails.

use super::*;

/// The kernel's view of `c`, or every reason (in words) it cannot be held.
pub(super) fn ruleset(
    epoch: u32,
    c: &Config,
    env: &Environment<'_>,
    ids: &Identities,
) -> Result<Ruleset, Vec<String>> {
    let rules = crate::ruleset::compile(epoch, c, env, ids)
        .map_err(|problems| problems.iter().map(|p| p.describe(c)).collect::<Vec<_>>())?;
    for (path, id) in &ids.exes {
        if id.is_none() {
            warn!(
                "policy: executable {} does not exist; its rules apply once it does and the configuration is reloaded",
                path.display()
            );
        }
    }
    Ok(rules)
}

/// The policy's view of names and DNS servers, borrowed for one apply or
/// query; `dns` holds the servers (read from resolv.conf unless configured).
pub(super) fn environment<'a>(resolved: &'a Resolved, dns: &'a [std::net::IpAddr]) -> Environment<'a> {
    Environment {
        resolved,
        dns_servers: dns,
    }
}

/// Follows cgroup creation only while some scope selects by cgroup; keeps
/// a running watcher when it is still needed.
pub(super) fn start_cgroup_watch(
    policy: &crate::config::policy::Policy,
    dir: &Path,
    tx: &mpsc::UnboundedSender<PathBuf>,
    running: Option<notify::RecommendedWatcher>,
) -> Option<notify::RecommendedWatcher> {
    let needed = policy.is_active()
        && policy.scopes().iter().any(|s| {
            s.selector
                .as_ref()
                .is_some_and(crate::config::policy::Selector::is_cgroup_based)
        });
    if !needed {
        return None;
    }
    if running.is_some() {
        return running;
    }
    match policy_scopes::watch_cgroups(dir, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                "policy: not watching {} for new cgroups ({e}); units started later join their scope at the next reload",
                dir.display()
            );
            None
        }
    }
}

/// The distinct labels in use, for the reload log line: a few names, not
/// one entry per host (10,000 hosts made that line 60 KB).
pub(super) fn labels_in(c: &Config) -> Vec<&str> {
    let mut labels: Vec<&str> = c.hosts.iter().filter_map(|h| h.label.as_deref()).collect();
    labels.sort_unstable();
    labels.dedup();
    labels.truncate(20);
    labels
}

pub(super) fn log_policy(c: &Config) {
    let p = &c.policy;
    if p.is_active() {
        info!(
            mode = p.mode.as_str(),
            default = p.default.as_str(),
            rules = p.rules.len(),
            scopes = p.scopes.len(),
            allow_loopback = p.allow_loopback,
            allow_dns = p.allow_dns,
            "egress policy in force"
        );
    } else {
        info!("no egress policy configured: every connection is allowed");
    }
    // At every start and reload, since `policy show` lists such a rule as
    // active like any other.
    for s in crate::policy::shadow::in_config(c) {
        warn!("{s}");
    }
}

impl Daemon {
    /// The one reload path: SIGHUP, file changes and control requests all
    /// end here, bracketed by RELOADING=1 and READY=1.
    pub(super) async fn reload(&mut self, trigger: &str) -> Result<ReloadReply, CallError> {
        service::reloading();
        let result = self.reload_config(trigger).await;
        service::ready(&self.summary());
        result
    }

    /// Every failed apply, whatever asked for it (SIGHUP, a file change,
    /// tracectl reload, add-host, remove-host, a DNS update), is reported the
    /// same way: logged, counted, and kept as `last_reload_error`.
    pub(super) fn reload_failed(&mut self, trigger: &str, e: &CallError) {
        let reason = match e {
            CallError::ConfigInvalid { errors } => errors.join("; "),
            CallError::InvalidArgument { reason, .. } => reason.clone(),
            other => format!("{other:?}"),
        };
        self.record_failure(trigger, &reason, reason.clone());
    }

    /// Logs (as `shown`), counts and keeps (as `reason`) a failed apply.
    fn record_failure(&mut self, trigger: &str, shown: &dyn std::fmt::Display, reason: String) {
        self.reload.failures += 1;
        error!(
            trigger,
            "reload ({trigger}): {shown}; the running configuration stays in force"
        );
        self.reload.last_error = Some(reason);
    }

    /// An invalid configuration, or one the kernel cannot hold, changes nothing.
    pub(super) async fn reload_config(&mut self, trigger: &str) -> Result<ReloadReply, CallError> {
        self.reload.reloads += 1;
        let started = Instant::now();
        let mut new = match self.load_config().await {
            Ok(c) => c,
            Err(errors) => {
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                self.record_failure(trigger, &errors, lines.join("; "));
                return Err(CallError::ConfigInvalid { errors: lines });
            }
        };
        let loaded = Instant::now();
        let needs_restart = reload::restart_only_changes(&self.config, &new);
        if !needs_restart.is_empty() {
            warn!(
                "reload ({trigger}): {} changed; that takes effect at restart",
                needs_restart.join(", ")
            );
        }
        reload::keep_restart_only(&self.config, &mut new);
        if new == self.config {
            self.reload.last_error = None;
            info!("reload ({trigger}): configuration unchanged");
            return Ok(ReloadReply {
                epoch: self.epoch,
                needs_restart,
            });
        }
        let resolved = self.resolved_for(&new);
        if let Err(e) = self.apply(new, resolved).await {
            self.reload_failed(trigger, &e);
            return Err(e);
        }
        self.reload.last_error = None;
        info!(
            epoch = self.epoch,
            trigger,
            trace = self.config.trace.as_str(),
            hosts = self.config.hosts.len(),
            rules = self.config.policy.rules.len(),
            labels = ?labels_in(&self.config),
            load = %human_duration(loaded.duration_since(started)),
            apply = %human_duration(loaded.elapsed()),
            "configuration applied"
        );
        Ok(ReloadReply {
            epoch: self.epoch,
            needs_restart,
        })
    }

    /// Parses the configuration on a blocking thread while records keep
    /// being taken (a 50 MB file must not stall the ring buffer's reader);
    /// the memory a refused large file took is handed back to the system.
    pub(super) async fn load_config(&mut self) -> Result<Config, crate::config::ConfigErrors> {
        let job = self.source.job();
        let load = tokio::task::spawn_blocking(move || job.run());
        tokio::pin!(load);
        let result = loop {
            tokio::select! {
                r = &mut load => break r,
                Some(batch) = self.records.recv() => self.pipeline.handle_batch(batch),
            }
        };
        let result = result.unwrap_or_else(|e| {
            Err(crate::config::ConfigErrors(vec![crate::config::ConfigError {
                file: self.source.main().to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("loading the configuration failed: {e}"),
            }]))
        });
        if result.is_err() {
            crate::sys::memory::give_back();
        }
        result
    }

    /// The resolved addresses a configuration keeps: those of names it still
    /// follows (forgotten names' addresses leave with its switch).
    pub(super) fn resolved_for(&self, new: &Config) -> Resolved {
        let names = new.hostnames();
        let mut resolved = self.resolved.clone();
        resolved.retain(|name, _| names.contains(name));
        resolved
    }

    /// A hostname's addresses changed: the kernel watch list follows, by the
    /// same atomic switch as a reload. Updates queued meanwhile are folded
    /// into one switch. An update the kernel cannot hold keeps the previous
    /// addresses in force (and in `tracectl hosts`).
    pub(super) async fn on_dns(&mut self, first: DnsUpdate) {
        let mut resolved = self.resolved.clone();
        let mut names = Vec::new();
        let mut update = Some(first);
        while let Some(u) = update {
            names.push(u.name.clone());
            if u.addresses.is_empty() {
                resolved.remove(&u.name);
            } else {
                resolved.insert(u.name, u.addresses);
            }
            update = self.dns_updates.try_recv().ok();
        }
        names.sort_unstable();
        names.dedup();
        let config = self.config.clone();
        match self.apply(config, resolved).await {
            Ok(()) => info!(
                epoch = self.epoch,
                addresses = self.addresses,
                "watch list updated from DNS"
            ),
            Err(e) => {
                let trigger = format!(
                    "DNS update for {}; their previous addresses stay in force",
                    names.join(", ")
                );
                self.reload_failed(&trigger, &e);
            }
        }
    }

    /// Puts a validated configuration with these resolved names in force,
    /// kernel side first; nothing of the daemon's state changes unless the
    /// kernel took it.
    pub(super) async fn apply(&mut self, new: Config, resolved: Resolved) -> Result<(), CallError> {
        let epoch = self.epoch + 1;
        let mut ids = policy_scopes::discover(&new.policy, &self.mount, &self.cgroup_dir);
        ids.containers = self.pipeline.container_metas();
        let dns = policy_scopes::dns_servers(&new.dns.nameservers);
        let rules = ruleset(epoch, &new, &environment(&resolved, &dns), &ids)
            .map_err(|errors| CallError::ConfigInvalid { errors })?;
        let addresses = rules.watch.len();
        // Records of the new epoch may arrive while the reply is awaited:
        // the pipeline must already know the epoch's host names. The epoch
        // in force stays current until the kernel has switched.
        self.pipeline.stage_hosts(epoch, &new.hosts);
        let reply = self.kernel.apply(rules);
        if let Err(reason) = self.kernel_reply(reply).await {
            self.pipeline.drop_hosts(epoch);
            return Err(CallError::InvalidArgument {
                field: "kernel".into(),
                reason,
            });
        }
        self.pipeline.commit_hosts(epoch);
        self.resolved = resolved;
        self.addresses = addresses;
        self.epoch = epoch;
        self.cgroup_watcher = start_cgroup_watch(
            &new.policy,
            &self.cgroup_dir,
            &self.cgroup_tx,
            self.cgroup_watcher.take(),
        );
        self.after_apply(new).await;
        Ok(())
    }

    /// What follows a configuration once the kernel holds it.
    pub(super) async fn after_apply(&mut self, new: Config) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("connectracer_config_last_reload_success_timestamp_seconds").set(now.as_secs_f64());
        if let Some(m) = self.pipeline.metrics() {
            m.set_max_series(new.metrics.max_series_per_metric);
            m.set_http_detail(new.metrics.http_detail);
            m.set_connection_labels(new.metrics.connection_labels);
        }
        self.pipeline.set_limits(table_limits(&new));
        self.pipeline.set_log(&new.log);
        self.pipeline.set_name_grace(new.dns.grace);
        if new.containers != self.config.containers {
            self.pipeline
                .containers()
                .configure(&new.containers, &self.container_tx);
        }
        let names = new.hostnames();
        if let Some(dns) = &self.dns {
            if new.dns != self.config.dns {
                if let Err(e) = dns.set_config(new.dns.clone()).await {
                    error!("DNS settings: {e}");
                }
            }
            if names != self.config.hostnames() {
                dns.set_hosts(names).await;
            }
        }
        let policy_changed = new.policy != self.config.policy;
        self.config = new;
        if policy_changed {
            log_policy(&self.config);
        }
    }

    pub(super) fn on_new_cgroup(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        let Some(rel) = crate::sys::cgroup_tree::relative_path(&self.mount, dir) else {
            return;
        };
        let Some(scope) = crate::ruleset::policy::scope_for_new_cgroup(&self.config.policy, &rel, None)
        else {
            return;
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {
                self.kernel.add_cgroup_scope(m.ino(), scope);
                info!(cgroup = %rel, scope, "policy: new cgroup joins its scope");
            }
            _ => {}
        }
    }

    /// A runtime's answer: the names for the events, and for scopes that
    /// select by container name, pod or namespace, the container's cgroup
    /// joins the first scope selecting it (its connects before this were
    /// judged without it).
    pub(super) fn on_container_answer(&mut self, answer: crate::containers::Answer) {
        use std::os::unix::fs::MetadataExt;
        let placement = match &answer {
            crate::containers::Answer::Found { meta, cgroup_dir, .. }
                if !meta.is_empty() && self.config.policy.selects_by_container_meta() =>
            {
                crate::sys::cgroup_tree::relative_path(&self.mount, cgroup_dir).and_then(|rel| {
                    crate::ruleset::policy::scope_for_new_cgroup(&self.config.policy, &rel, Some(meta))
                        .map(|scope| (rel, cgroup_dir.clone(), scope))
                })
            }
            _ => None,
        };
        self.pipeline.on_container_answer(answer);
        let Some((rel, dir, scope)) = placement else {
            return;
        };
        if let Ok(m) = std::fs::metadata(&dir) {
            self.kernel.add_cgroup_scope(m.ino(), scope);
            info!(cgroup = %rel, scope, "policy: a container joins its scope by name");
        }
    }
}
