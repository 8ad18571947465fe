//! The filters `who`, `connections` and `watch` share, as flags; the
//! daemon applies them (connectracer_proto::api::Filter).

use clap::{Args, ValueEnum};
use connectracer_proto::api::Filter;
use connectracer_proto::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    Allow,
    WouldDeny,
    Deny,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Only processes of this systemd unit (a glob: `*.service`).
    #[arg(long, value_name = "GLOB")]
    pub unit: Option<String>,
    /// Only processes of this container (its id or a prefix of it).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Only processes with this command name (a glob).
    #[arg(long, value_name = "GLOB")]
    pub comm: Option<String>,
    /// Only processes of this executable (a glob over its path).
    #[arg(long, value_name = "GLOB")]
    pub exe: Option<String>,
    /// Only processes of this user (a name or a uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only destinations in this address or CIDR.
    #[arg(long, value_name = "CIDR")]
    pub dest: Option<String>,
    /// Only this destination port.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only connections the policy judged so.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,
    /// Only connections whose resolved name (what the process looked
    /// up) or watched host matches this glob, e.g. `*.example.com`.
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Only containers whose name (as their runtime reports it) matches
    /// this glob. A container's first events, sent while its runtime is
    /// asked, have no name yet.
    #[arg(long, value_name = "GLOB")]
    pub container_name: Option<String>,
    /// Only Kubernetes pods whose name matches this glob.
    #[arg(long, value_name = "GLOB")]
    pub pod: Option<String>,
    /// Only Kubernetes pods in a namespace matching this glob.
    #[arg(long, value_name = "GLOB")]
    pub namespace: Option<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            unit: self.unit.clone(),
            container: self.container.clone(),
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            user: self.user.clone(),
            dest: self.dest.clone(),
            port: self.port,
            verdict: self.verdict.map(|v| match v {
                VerdictArg::Allow => Verdict::Allow,
                VerdictArg::WouldDeny => Verdict::WouldDeny,
                VerdictArg::Deny => Verdict::Deny,
            }),
            name: self.name.clone(),
            container_name: self.container_name.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
        }
    }
}
