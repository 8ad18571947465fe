//! Validation of `[gpu]`.

use super::super::gpu::{GpuConfig, GpuMode, MAX_POLL_INTERVAL, MIN_POLL_INTERVAL};
use super::super::raw::RawGpu;
use super::{duration, Ctx};

pub(super) fn apply(ctx: &mut Ctx<'_>, g: &RawGpu, out: &mut GpuConfig) {
    if let Some(v) = &g.enabled {
        match v.get_ref() {
            toml::Value::Boolean(true) => out.enabled = GpuMode::On,
            toml::Value::Boolean(false) => out.enabled = GpuMode::Off,
            toml::Value::String(s) if s == "auto" => out.enabled = GpuMode::Auto,
            other => ctx.spanned(
                v,
                "gpu.enabled",
                format!("`{other}`: expected \"auto\", true or false"),
            ),
        }
    }
    if let Some(v) = &g.poll_interval {
        if let Some(d) = duration(ctx, v, "gpu.poll_interval") {
            if (MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&d) {
                out.poll_interval = d;
            } else {
                ctx.spanned(
                    v,
                    "gpu.poll_interval",
                    format!(
                        "`{}`: must be from {} to {}",
                        v.get_ref(),
                        humantime::format_duration(MIN_POLL_INTERVAL),
                        humantime::format_duration(MAX_POLL_INTERVAL)
                    ),
                );
            }
        }
    }
}
