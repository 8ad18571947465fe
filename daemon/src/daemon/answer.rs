//! Answers to control requests (socket and D-Bus alike), from the state
//! the owner holds.

use super::*;

pub(super) fn state_error(e: crate::added_hosts::AddedHostsError) -> CallError {
    CallError::InvalidArgument {
        field: "state".into(),
        reason: format!("{:#}", anyhow::Error::from(e)),
    }
}

impl Daemon {
    pub(super) async fn answer(&mut self, req: &Request) -> Outcome {
        let caller = &req.caller;
        crate::control::authz::authorize(caller, &req.op)?;
        Ok(match &req.op {
            Operation::GetVersion => Answer::from(VersionReply {
                version: env!("CARGO_PKG_VERSION").to_string(),
                kernel: nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }),
            Operation::GetStats => self.stats().await?.into(),
            Operation::Who(p) => {
                let labels: Vec<&str> = self
                    .config
                    .hosts
                    .iter()
                    .filter_map(|h| h.label.as_deref())
                    .collect();
                query::who(self.pipeline.table(), caller, p, &self.resolved, &labels)?.into()
            }
            Operation::Ps(p) => query::ps(self.pipeline.table(), caller, p)?.into(),
            Operation::Connections(p) => query::connections(self.pipeline.table(), caller, p)?.into(),
            Operation::Answers(p) => query::answers(self.pipeline.answers(), caller, p)?.into(),
            Operation::Gpu => self.gpu.reply(caller.uid, caller.privileged).into(),
            Operation::Reload => {
                let trigger = format!("control request from uid {}", caller.uid);
                self.reload(&trigger).await?.into()
            }
            Operation::AddHost(p) => self.add_host(p, caller.uid).await?.into(),
            Operation::RemoveHost(p) => self.remove_host(&p.name, caller.uid).await?.into(),
            Operation::Hosts => HostsReply {
                hosts: self.hosts().await,
            }
            .into(),
            Operation::PolicyShow => {
                let dns = policy_scopes::dns_servers(&self.config.dns.nameservers);
                let env = environment(&self.resolved, &dns);
                crate::policy::explain::show(&self.config.policy, &env).into()
            }
            Operation::PolicyCheck(p) => {
                let dns = policy_scopes::dns_servers(&self.config.dns.nameservers);
                let env = environment(&self.resolved, &dns);
                crate::policy::explain::check(&self.config.policy, &env, p, &self.mount)?.into()
            }
            Operation::PolicySuggest(p) => self.suggest(p)?.into(),
            // Profiles answer when their recording ends: see `begin_profile`.
            Operation::Profile(_) => {
                return Err(CallError::InvalidArgument {
                    field: "method".into(),
                    reason: "Profile is answered when its recording ends, never at once".into(),
                })
            }
            // Streams are served by the transports from the event broadcast.
            Operation::Watch(_) | Operation::Sandbox(_) => return Err(crate::control::watch_needs_more()),
        })
    }

    /// Adds a host through the reload path. The host is written to the
    /// state directory only once the kernel holds it: a host the
    /// configuration or the kernel refuses leaves no trace.
    pub(super) async fn add_host(&mut self, p: &AddHostParams, uid: u32) -> Result<ReloadReply, CallError> {
        let host = AddedHost {
            name: p.name.clone(),
            ports: p
                .ports
                .iter()
                .map(|port| {
                    port.parse::<i64>()
                        .map_or_else(|_| toml::Value::String(port.clone()), toml::Value::Integer)
                })
                .collect(),
            label: p.label.clone(),
        };
        crate::added_hosts::check(&host)
            .map_err(|(field, reason)| CallError::InvalidArgument { field, reason })?;
        self.source
            .added
            .stage_add(host, p.runtime)
            .map_err(state_error)?;
        // Refused with the request's own errors (a duplicate, say) before
        // the reload: they are the caller's mistake, not a failed reload.
        if let Err(errors) = self.load_config().await {
            if errors.0.iter().all(|e| self.source.added.is_source(&e.file)) {
                self.source.added.discard();
                let reasons: Vec<String> = errors.0.iter().map(|e| e.message.clone()).collect();
                return Err(CallError::InvalidArgument {
                    field: "name".into(),
                    reason: reasons.join("; "),
                });
            }
        }
        let result = self.reload(&format!("add-host {} by uid {uid}", p.name)).await;
        // What fails from here on is the whole configuration's (the kernel's
        // maps full, say): a failed reload, reported as one.
        self.settle_added(result)
    }

    /// Commits the staged change to the added hosts if its reload applied
    /// it, drops it otherwise.
    pub(super) fn settle_added(
        &mut self,
        result: Result<ReloadReply, CallError>,
    ) -> Result<ReloadReply, CallError> {
        match result {
            Ok(reply) => {
                self.source.added.commit().map_err(|e| {
                    let e = state_error(e);
                    error!("{e:?}; the change is in force until restart only");
                    e
                })?;
                Ok(reply)
            }
            Err(e) => {
                self.source.added.discard();
                Err(e)
            }
        }
    }

    pub(super) async fn remove_host(&mut self, name: &str, uid: u32) -> Result<ReloadReply, CallError> {
        let removed = self.source.added.stage_remove(name).map_err(state_error)?;
        if removed == 0 {
            if let Some(h) = self.config.hosts.iter().find(|h| h.name == name) {
                return Err(CallError::InvalidArgument {
                    field: "name".into(),
                    reason: format!("`{name}` is configured in {}: edit that file", h.origin.display()),
                });
            }
            return Err(CallError::HostNotFound {
                name: name.to_string(),
            });
        }
        let result = self.reload(&format!("remove-host {name} by uid {uid}")).await;
        self.settle_added(result)
    }

    pub(super) async fn hosts(&mut self) -> Vec<HostInfo> {
        let dns: HashMap<String, crate::dns::HostStatus> = match &self.dns {
            Some(d) => d
                .status()
                .await
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            None => HashMap::new(),
        };
        self.config
            .hosts
            .iter()
            .map(|h| {
                let ports = h.ports.items();
                let (kind, addresses, status) = match &h.target {
                    HostTarget::Net(n) if n.prefix_len() == n.max_prefix_len() => {
                        ("address", vec![n.addr().to_string()], None)
                    }
                    HostTarget::Net(n) => ("cidr", vec![n.to_string()], None),
                    HostTarget::Name(name) => (
                        "hostname",
                        self.resolved
                            .get(name)
                            .into_iter()
                            .flatten()
                            .map(ToString::to_string)
                            .collect(),
                        dns.get(name),
                    ),
                };
                HostInfo {
                    id: h.id,
                    name: h.name.clone(),
                    kind: kind.to_string(),
                    ports,
                    label: h.label.clone(),
                    source: h.origin.display().to_string(),
                    addresses,
                    ttl_seconds: status.and_then(|s| s.ttl_seconds),
                    consecutive_failures: status.map(|s| s.consecutive_failures),
                    last_error: status.and_then(|s| s.last_error.clone()),
                }
            })
            .collect()
    }

    pub(super) async fn stats(&mut self) -> Result<StatsReply, CallError> {
        let reply = self.kernel.stats();
        let kernel = self
            .kernel_reply(reply)
            .await
            .map_err(|reason| CallError::InvalidArgument {
                field: "kernel".into(),
                reason,
            })?;
        Ok(StatsReply {
            stats: self.collect_stats(kernel),
        })
    }
}

impl Daemon {
    /// `policy suggest`: exactly one of unit, cgroup and uid (a container
    /// is looked for first: `begin_suggest_container`); a cgroup may be
    /// given as its full path under the cgroup2 mount.
    fn suggest(&mut self, p: &SuggestParams) -> Result<SuggestReply, CallError> {
        let given = [p.unit.is_some(), p.cgroup.is_some(), p.uid.is_some()];
        if given.iter().filter(|g| **g).count() != 1 || p.container.is_some() {
            return Err(CallError::InvalidArgument {
                field: "unit".into(),
                reason: "exactly one of unit, cgroup, uid and container".into(),
            });
        }
        let mut q = p.clone();
        if let Some(c) = &p.cgroup {
            let below = Path::new(c)
                .strip_prefix(&self.mount)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_else(|_| c.clone());
            if !below.starts_with('/') {
                return Err(CallError::InvalidArgument {
                    field: "cgroup".into(),
                    reason: format!("`{c}` is not a path below the cgroup2 mount (/system.slice/x.service)"),
                });
            }
            q.cgroup = Some(below);
        }
        Ok(self.pipeline.egress().suggest(&q, std::time::SystemTime::now()))
    }
}
