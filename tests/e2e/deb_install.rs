//! The Debian package in a fresh Debian root, as an operator meets it: `dpkg -i` into a
//! debootstrapped bookworm, the installed `calltap --version` and `calltap check-config` (as the
//! service account, against the shipped /etc/calltap/calltap.ini), the account, directories and
//! enabled unit that postinst made; a reinstall keeps an edited conffile and recordings; `dpkg
//! --remove` keeps data and configuration; `dpkg --purge` leaves the root exactly as it was.
//!
//! The pristine root is debootstrapped once from this machine's own Debian mirror and cached as
//! a tarball under target/debootstrap-cache; each run extracts a fresh copy, so one run's
//! leftovers can never hide or cause another's failure.

use std::{
    collections::BTreeSet,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use calltap_lab::root::{require_root, require_tool};

const TEST: &str = "deb_install";
const SUITE: &str = "bookworm";
/// adduser: the package depends on it and minbase leaves it out; init-system-helpers:
/// deb-systemd-helper, which enables the unit (every systemd machine has it).
const INCLUDE: &str = "adduser,init-system-helpers";
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";
const PATH_IN_ROOT: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[test]
fn deb_installs_runs_and_purges_cleanly_in_a_fresh_debian_root() {
    if !require_root(TEST)
        || !require_tool(TEST, "debootstrap")
        || !require_tool(TEST, "dpkg-deb")
        || !require_tool(TEST, "chroot")
    {
        return;
    }
    let deb = package();
    let version = run_ok(
        Command::new("dpkg-deb")
            .args(["--field"])
            .arg(&deb)
            .arg("Version"),
        Duration::from_secs(30),
        "dpkg-deb --field Version",
    );
    let version = version.trim();
    let upstream = version.rsplit_once('-').map_or(version, |(u, _)| u);

    let root = FreshRoot::new(&pristine_root_tarball());
    let pristine = root.listing();
    let pristine_accounts = root.accounts();

    // Install.
    root.install(&deb);
    let out = root.run(&["calltap", "--version"]);
    assert_eq!(
        out.trim(),
        format!("calltap {upstream}"),
        "installed calltap --version does not match package version {version}"
    );
    let calltap = root
        .passwd_entry("calltap")
        .expect("postinst did not create the calltap user");
    assert!(
        calltap.uid < 1000 && calltap.shell.ends_with("nologin"),
        "calltap must be a system account without a login shell: {calltap:?}"
    );
    assert!(
        root.group_gid("calltap") == Some(calltap.gid),
        "no calltap group, or it is not the user's primary group"
    );
    for dir in ["var/lib/calltap", "var/spool/calltap"] {
        let meta = std::fs::metadata(root.path(dir))
            .unwrap_or_else(|e| panic!("postinst did not create /{dir}: {e}"));
        assert!(meta.is_dir(), "/{dir} is not a directory");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (calltap.uid, calltap.gid, 0o750),
            "/{dir} must be calltap:calltap 0750"
        );
    }
    let ini = std::fs::metadata(root.path("etc/calltap/calltap.ini"))
        .expect("/etc/calltap/calltap.ini not installed");
    assert_eq!(
        (ini.uid(), ini.gid(), ini.mode() & 0o777),
        (0, calltap.gid, 0o640),
        "/etc/calltap/calltap.ini must be root:calltap 0640 (it may hold database credentials)"
    );
    // As the service runs it: the service account reading the shipped configuration.
    let out = root.run_as(
        "calltap",
        &[
            "calltap",
            "check-config",
            "--config",
            "/etc/calltap/calltap.ini",
        ],
    );
    assert!(
        out.contains("/var/lib/calltap"),
        "check-config should report the packaged data dir /var/lib/calltap: {out}"
    );
    let unit = root.path("lib/systemd/system/calltap.service");
    assert!(unit.is_file(), "{} missing", unit.display());
    let wants = root.path("etc/systemd/system/multi-user.target.wants/calltap.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "postinst did not enable calltap.service ({} missing)",
        wants.display()
    );
    verify_unit(&root);
    captures_with_the_units_capabilities(&root);
    assert!(
        root.path("usr/share/man/man1/calltap.1.gz").is_file(),
        "man page missing"
    );

    // Reinstall (the upgrade path: prerm upgrade, postinst configure <old version>): an edited
    // conffile and the recordings stay as they are.
    let ini_path = root.path("etc/calltap/calltap.ini");
    let edited = std::fs::read_to_string(&ini_path).unwrap().replacen(
        "\ninterfaces =",
        "\ninterfaces = eth9",
        1,
    );
    std::fs::write(&ini_path, &edited).unwrap();
    let recording = root.path("var/lib/calltap/recordings/kept.wav");
    std::fs::create_dir_all(recording.parent().unwrap()).unwrap();
    std::fs::write(&recording, b"RIFF").unwrap();
    root.install(&deb);
    assert_eq!(
        std::fs::read_to_string(&ini_path).unwrap(),
        edited,
        "reinstall overwrote the admin's edit of /etc/calltap/calltap.ini"
    );
    assert!(recording.is_file(), "reinstall lost a recording");

    // Remove: the binary goes, configuration, data and the account stay.
    root.dpkg(&["--remove", "calltap"]);
    assert!(
        !root.path("usr/bin/calltap").exists(),
        "remove left /usr/bin/calltap"
    );
    assert!(recording.is_file(), "remove deleted recordings");
    assert!(ini_path.is_file(), "remove deleted the conffile");
    assert!(
        root.passwd_entry("calltap").is_some(),
        "remove deleted the account"
    );

    // Purge: nothing of the package is left.
    root.dpkg(&["--purge", "calltap"]);
    assert!(
        root.try_run(&["dpkg-query", "-W", "calltap"]).is_err(),
        "dpkg still knows calltap after purge"
    );
    let _ = std::fs::remove_file(root.path("tmp/calltap.deb"));
    assert_eq!(
        root.accounts(),
        pristine_accounts,
        "purge left /etc/passwd, group, shadow or gshadow different from the fresh root"
    );
    let after = root.listing();
    let left: Vec<_> = after
        .difference(&pristine)
        .filter(|p| !is_bookkeeping(p))
        .collect();
    let gone: Vec<_> = pristine
        .difference(&after)
        .filter(|p| !is_bookkeeping(p))
        .collect();
    assert!(
        left.is_empty() && gone.is_empty(),
        "purge did not restore the fresh root: left behind {left:?}, removed {gone:?}"
    );
}

/// dpkg's and adduser's own records (and adduser's lock in /run, a tmpfs on a booted system)
/// change with any install and are not the package's files.
fn is_bookkeeping(path: &str) -> bool {
    path == "run/adduser"
        || path.starts_with("var/lib/dpkg/")
        || path.starts_with("var/log/")
        || path.starts_with("var/cache/debconf/")
        || path.starts_with("var/lib/systemd/deb-systemd-helper-")
        || matches!(
            path,
            "etc/passwd-"
                | "etc/group-"
                | "etc/shadow-"
                | "etc/gshadow-"
                | "etc/subuid-"
                | "etc/subgid-"
        )
}

/// The package under test: CALLTAP_DEB when the caller built it (a relative path is taken from
/// the workspace root, where `cargo xtask deb` runs), else `cargo xtask deb`.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("CALLTAP_DEB") {
        let deb = workspace().join(deb);
        assert!(deb.is_file(), "CALLTAP_DEB={} is not a file", deb.display());
        return deb;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("{TEST}: building the package with `cargo xtask deb`");
    run_ok(
        Command::new(cargo)
            .current_dir(workspace())
            .args(["xtask", "deb"]),
        Duration::from_secs(40 * 60),
        "cargo xtask deb",
    );
    let dir = target_dir().join("debian");
    let prefix = format!("calltap_{}-", env!("CARGO_PKG_VERSION"));
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("_amd64.deb"))
        })
        .unwrap_or_else(|| {
            panic!(
                "cargo xtask deb made no {prefix}*_amd64.deb in {}",
                dir.display()
            )
        })
}

/// Canonical, so paths compare equal to the mount points in /proc/self/mounts.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace dir")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// A tarball of a pristine minbase root, debootstrapped once per mirror and package set.
fn pristine_root_tarball() -> PathBuf {
    let mirror = debian_mirror();
    let cache = target_dir().join("debootstrap-cache");
    std::fs::create_dir_all(&cache).expect("debootstrap cache dir");
    let key = fnv1a(format!("{SUITE} minbase {INCLUDE} {mirror}").as_bytes());
    let tarball = cache.join(format!("{SUITE}-minbase-{key:016x}.tar.gz"));
    if tarball.is_file() {
        return tarball;
    }
    let build = cache.join(format!("build-{}", std::process::id()));
    remove_tree(&build);
    eprintln!(
        "{TEST}: debootstrap {SUITE} from {mirror} (cached in {})",
        cache.display()
    );
    run_ok(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&build)
            .arg(&mirror),
        Duration::from_secs(20 * 60),
        "debootstrap",
    );
    let partial = tarball.with_extension("partial");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-czf"])
            .arg(&partial)
            .arg("-C")
            .arg(&build)
            .arg("."),
        Duration::from_secs(5 * 60),
        "tar of the debootstrapped root",
    );
    std::fs::rename(&partial, &tarball).expect("rename the root tarball into place");
    remove_tree(&build);
    tarball
}

/// The Debian mirror apt on this machine uses for main, from sources.list (one-line format) or
/// sources.list.d/*.sources (deb822); deb.debian.org if neither names one.
fn debian_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        let found = if name.ends_with(".sources") {
            mirror_in_deb822(&text)
        } else if name.ends_with(".list") {
            mirror_in_one_line(&text)
        } else {
            None // apt ignores other names (e.g. *.disabled)
        };
        if let Some(mirror) = found {
            return mirror;
        }
    }
    FALLBACK_MIRROR.to_owned()
}

fn mirror_in_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == SUITE).then(|| uri.to_owned())
    })
}

fn mirror_in_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let is_deb = field("Types")?.split_whitespace().any(|t| t == "deb");
        let has_suite = field("Suites")?.split_whitespace().any(|s| s == SUITE);
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        (is_deb && has_suite && enabled)
            .then(|| field("URIs"))?
            .and_then(|u| u.split_whitespace().next().map(str::to_owned))
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `systemd-analyze verify` on the installed unit, when the host has it. The root has no
/// systemd of its own, so the host's checks a copy whose /usr/bin/calltap points into the root
/// (verify insists that ExecStart's program exists).
fn verify_unit(root: &FreshRoot) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("{TEST}: systemd-analyze not on this host: unit not verified");
        return;
    }
    let unit = std::fs::read_to_string(root.path("lib/systemd/system/calltap.service"))
        .expect("read the installed unit");
    let bin = root.path("usr/bin/calltap");
    let dir = root.path("tmp/verify-unit");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("calltap.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/calltap", &bin.to_string_lossy()),
    )
    .unwrap();
    let result = run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy),
        Duration::from_secs(60),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    if let Err(e) = result {
        panic!("systemd-analyze verify calltap.service: {e}");
    }
}

/// The unit's promise that four capabilities are enough: the installed binary, as the calltap
/// user, with exactly the unit's AmbientCapabilities (and nothing else in its bounding set, no
/// new privileges), attaches XDP to a veth in a private network namespace, records into
/// /var/lib/calltap and stops cleanly on SIGTERM, as under systemd.
fn captures_with_the_units_capabilities(root: &FreshRoot) {
    if !require_tool(TEST, "ip") {
        return;
    }
    let unit = std::fs::read_to_string(root.path("lib/systemd/system/calltap.service"))
        .expect("read the installed unit");
    let caps_of = |key: &str| -> Vec<String> {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .split_whitespace()
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let ambient = caps_of("AmbientCapabilities=");
    assert_eq!(
        ambient,
        caps_of("CapabilityBoundingSet="),
        "the unit's ambient and bounding capability sets differ"
    );
    let caps = std::iter::once("-all".to_owned())
        .chain(
            ambient
                .iter()
                .map(|c| format!("+{}", c.trim_start_matches("cap_"))),
        )
        .collect::<Vec<_>>()
        .join(",");
    let _ns = NetNs::new("ct-debcap");
    // `ip netns exec` runs in its own mount namespace: the sysfs mounted for the root (aya reads
    // the kernel's BTF and CPU list there) disappears with it.
    let script = format!(
        "mount -t sysfs sysfs {root}/sys && exec chroot {root} timeout --preserve-status -s TERM 3 \
         setpriv --reuid=calltap --regid=calltap --clear-groups --no-new-privs \
         --inh-caps={caps} --ambient-caps={caps} --bounding-set={caps} \
         /usr/bin/calltap run --config /etc/calltap/calltap.ini --interface v0 --source xdp \
         --workers 1 2>&1",
        root = root.dir.display()
    );
    let log = run(
        Command::new("ip").args(["netns", "exec", "ct-debcap", "sh", "-c", &script]),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("calltap run as calltap with only {caps} failed: {e}"));
    assert!(
        log.contains("XDP attached"),
        "calltap run with the unit's capabilities did not attach XDP:\n{log}"
    );
    let summary = root.path("var/lib/calltap/run-summary.json");
    assert!(
        summary.is_file(),
        "calltap run with the unit's capabilities wrote no {}: {log}",
        summary.display()
    );
}

/// A veth pair (v0, v1) in a network namespace of its own, deleted on drop.
struct NetNs(&'static str);

impl NetNs {
    fn new(name: &'static str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let ns = Self(name);
        for args in [
            vec!["netns", "add", name],
            vec![
                "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ],
            vec!["-n", name, "link", "set", "v0", "up"],
            vec!["-n", name, "link", "set", "v1", "up"],
        ] {
            run_ok(
                Command::new("ip").args(&args),
                Duration::from_secs(30),
                &format!("ip {}", args.join(" ")),
            );
        }
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).output();
    }
}

/// A fresh Debian root extracted from the cached tarball, with /proc mounted for maintainer
/// scripts. Drop unmounts it and deletes the root, unless the test failed: then the root is kept
/// for a look and its path printed.
struct FreshRoot {
    dir: PathBuf,
}

#[derive(Debug)]
struct PasswdEntry {
    uid: u32,
    gid: u32,
    shell: String,
}

impl FreshRoot {
    fn new(tarball: &Path) -> Self {
        let dir = target_dir().join("deb-install-root");
        unmount_under(&dir);
        remove_tree(&dir);
        std::fs::create_dir_all(&dir).expect("root dir");
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "-xzf"])
                .arg(tarball)
                .arg("-C")
                .arg(&dir),
            Duration::from_secs(5 * 60),
            "extracting the pristine root",
        );
        let root = Self { dir };
        run_ok(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(root.path("proc")),
            Duration::from_secs(30),
            "mount /proc in the root",
        );
        root
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn chroot(&self, userspec: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        if let Some(user) = userspec {
            cmd.arg(format!("--userspec={user}:{user}"));
        }
        cmd.arg(&self.dir)
            .args(args)
            .env_clear()
            .env("PATH", PATH_IN_ROOT)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("HOME", "/root");
        cmd
    }

    fn try_run(&self, args: &[&str]) -> Result<String, String> {
        run(&mut self.chroot(None, args), Duration::from_secs(120))
    }

    fn run(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("in the root: {}: {e}", args.join(" ")))
    }

    fn run_as(&self, user: &str, args: &[&str]) -> String {
        run(&mut self.chroot(Some(user), args), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("in the root as {user}: {}: {e}", args.join(" ")))
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let mut all = vec!["dpkg"];
        all.extend(args);
        self.run(&all)
    }

    fn install(&self, deb: &Path) {
        std::fs::copy(deb, self.path("tmp/calltap.deb")).expect("copy the .deb into the root");
        self.dpkg(&["-i", "/tmp/calltap.deb"]);
    }

    fn passwd_entry(&self, user: &str) -> Option<PasswdEntry> {
        let passwd = std::fs::read_to_string(self.path("etc/passwd")).expect("/etc/passwd");
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() == 7 && f[0] == user).then(|| PasswdEntry {
                uid: f[2].parse().expect("uid"),
                gid: f[3].parse().expect("gid"),
                shell: f[6].to_owned(),
            })
        })
    }

    fn group_gid(&self, group: &str) -> Option<u32> {
        let groups = std::fs::read_to_string(self.path("etc/group")).expect("/etc/group");
        groups.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() == 4 && f[0] == group).then(|| f[2].parse().expect("gid"))
        })
    }

    fn accounts(&self) -> Vec<String> {
        ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"]
            .iter()
            .map(|f| std::fs::read_to_string(self.path(f)).unwrap_or_default())
            .collect()
    }

    /// Every path in the root (files, directories, links), except the kernel's mounts.
    fn listing(&self) -> BTreeSet<String> {
        let mut paths = BTreeSet::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let path = entry.expect("dir entry").path();
                let rel = path
                    .strip_prefix(&self.dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if matches!(rel.as_str(), "proc" | "sys" | "dev") {
                    continue;
                }
                if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    stack.push(path);
                }
                paths.insert(rel);
            }
        }
        paths
    }
}

impl Drop for FreshRoot {
    fn drop(&mut self) {
        unmount_under(&self.dir);
        if std::thread::panicking() {
            eprintln!("{TEST}: failed; the root is kept at {}", self.dir.display());
        } else {
            remove_tree(&self.dir);
        }
    }
}

/// Unmounts whatever a previous or the current run mounted below `dir` (deepest first), so the
/// tree can be deleted without reaching into /proc.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let dir = dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&format!("{dir}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let ok = Command::new("umount")
            .arg(point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["--lazy", point]).status();
        }
    }
}

/// `rm -rf --one-file-system`: never crosses into a mount that survived unmount_under.
fn remove_tree(dir: &Path) {
    if dir.exists() {
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(dir)
            .status();
    }
}

fn run_ok(cmd: &mut Command, limit: Duration, what: &str) -> String {
    run(cmd, limit).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Runs with a time limit; Err carries the exit status and the command's output.
fn run(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{status}\nstdout:\n{out}\nstderr:\n{err}"))
    }
}

#[test]
fn finds_the_mirror_in_both_apt_source_formats() {
    let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
    assert_eq!(
        mirror_in_deb822(deb822).as_deref(),
        Some("http://mirror.example/debian")
    );
    let one_line = "# comment\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
    assert_eq!(
        mirror_in_one_line(one_line).as_deref(),
        Some("http://mirror.example/debian")
    );
    assert_eq!(
        mirror_in_one_line("deb http://x/debian trixie main\n"),
        None
    );
}
