//! `--profile-syscalls FILE`: the file made before the command runs (a
//! path that cannot be written fails the run, not the end of a long one),
//! filled with the profile the daemon's last reply carries.

use std::io::Write;
use std::path::{Path, PathBuf};

use connectracer_proto::api::ProfileReply;

use crate::profile::{render, warn_unknown, ProfileFormat};

/// Where the profile goes, and how it is written.
#[derive(Debug)]
pub struct ProfileOut {
    path: PathBuf,
    file: std::fs::File,
    format: ProfileFormat,
}

impl ProfileOut {
    pub fn create(path: &Path, format: Option<ProfileFormat>) -> Result<Self, String> {
        let file =
            std::fs::File::create(path).map_err(|e| format!("--profile-syscalls {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            format: format.unwrap_or(ProfileFormat::Oci),
        })
    }

    /// Writes the profile, or says why there is none and removes the
    /// file; false when the file holds no profile.
    pub fn finish(mut self, profile: Option<&ProfileReply>, ended: &str) -> bool {
        let Some(p) = profile else {
            eprintln!("tracectl: no syscall profile ({ended})");
            let _ = std::fs::remove_file(&self.path);
            return false;
        };
        warn_unknown(p);
        let text = render(p, self.format, false);
        match self
            .file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
        {
            Ok(()) => {
                eprintln!(
                    "tracectl: {} syscalls profiled, written to {}",
                    p.syscalls.len(),
                    self.path.display()
                );
                true
            }
            Err(e) => {
                eprintln!("tracectl: --profile-syscalls {}: {e}", self.path.display());
                false
            }
        }
    }
}
