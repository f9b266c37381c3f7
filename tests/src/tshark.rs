//! tshark as the independent witness: it captures what the switch sent down the mirror link
//! and counts packets, so tests compare CallTap's numbers with a tool that is not CallTap.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::ns_command;

/// A running capture; `stop` ends it and returns the file.
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
}

impl Capture {
    /// Starts `tshark -i IF -w FILE` in a namespace and waits until it is capturing.
    pub fn start(ns: &str, interface: &str, path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let log = path.with_extension("log");
        let child = ns_command(
            ns,
            &[
                "tshark",
                "-q",
                "-n",
                "-i",
                interface,
                "-w",
                path.to_str().context("path")?,
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting tshark (is it installed?)")?;
        let capture = Self {
            child: Some(child),
            path: path.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Capturing on")
        {
            if Instant::now() > deadline {
                bail!(
                    "tshark did not start capturing on {interface}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // dumpcap announces before the socket is fully bound; a short grace avoids losing the
        // first INVITE.
        std::thread::sleep(Duration::from_millis(300));
        Ok(capture)
    }

    /// Stops the capture (SIGINT lets dumpcap flush) and returns the capture file.
    pub fn stop(mut self) -> Result<PathBuf> {
        if let Some(mut child) = self.child.take() {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            crate::sipp::wait_bounded(&mut child, Duration::from_secs(15))?;
        }
        Ok(self.path.clone())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Number of packets in `file` matching a display filter.
pub fn count(file: &Path, filter: &str) -> Result<u64> {
    Ok(fields(file, filter, &["frame.number"])?.len() as u64)
}

/// One row per matching packet with the requested fields (tab separated by tshark).
pub fn fields(file: &Path, filter: &str, names: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"])
        .arg(file)
        .args(["-Y", filter, "-T", "fields"]);
    for name in names {
        cmd.args(["-e", name]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!(
            "tshark -r {} -Y '{filter}': {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}
