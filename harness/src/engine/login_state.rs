//! Saved login states (`--saved-login`): a guest stopped at its login prompt after its first
//! boot and saved with QEMU's migration (RAM and devices) beside copies of its disk overlay,
//! vars store and cloud-init seed, so that later cases of the same image, QEMU, firmware and
//! machine start at that prompt in seconds instead of booting again (a Debian image's first
//! boot to its prompt is ~80-90 s under TCG, most of it cloud-init).
//!
//! A state is keyed by everything that makes the saved machine the one a case would boot:
//! the VM's command line with per-run paths as placeholders, the sha256 of the QEMU binary, the
//! firmware code and the vars template, the image's base file and sha256, the login user and
//! the state format. The first case with a key boots normally, saves at its login prompt
//! (`stop`, `migrate` to a file, copies of the disks, `cont`) and goes on; cases that come
//! later make a fresh overlay over the saved disk, copy the saved vars store and seed, start
//! QEMU with `-incoming defer`, load the state and continue it. The guest then logs in with the
//! saved state's credentials (cloud-init provisioned them in the saving boot) and its clock is
//! set to the host's (it resumes at the time of the save; apt checks Release dates).
//!
//! States live in `CACHE/login-states/<key>/` (mode 0700: the state and disk hold the guest's
//! password), made in a staging directory and renamed into place under a lock per key, so a
//! half-written state is never used and two cases never save the same key at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::case::{Case, dry_run_command_line};
use super::record::Secrets;
use super::session::Session;
use super::step::Step;
use crate::core::verdict::Target;
use crate::sys::fsx;

/// Changes whenever what a state holds or how it is used changes (old states are not reused).
const FORMAT: &str = "login-state/1";
const STATE: &str = "state";
const DISK: &str = "disk.qcow2";
const VARS: &str = "vars.fd";
const SEED: &str = "seed.img";
const SECRETS: &str = "secrets.json";
const META: &str = "meta.json";
/// How long a save or a load may take (a 1-2 GiB guest's state is ~300 MB: seconds).
const MIGRATION_LIMIT: Duration = Duration::from_secs(300);

/// What made a state, kept beside it (`meta.json`) and copied into the cases that use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateMeta {
    pub format: String,
    pub key: String,
    /// The case whose boot was saved, and when.
    pub saved_by: String,
    pub saved_at: String,
    /// Seconds from QEMU's start to the saved login prompt (what a case resuming it skips).
    pub boot_s: f64,
    /// The state file's size.
    pub state_bytes: u64,
    /// The command line of the saving case, per-run paths as placeholders.
    pub command_line: String,
}

impl StateMeta {
    pub fn new(key: &str, saved_by: &str, boot_s: f64, command_line: String) -> StateMeta {
        StateMeta {
            format: FORMAT.into(),
            key: key.into(),
            saved_by: saved_by.into(),
            saved_at: jiff::Timestamp::now().to_string(),
            boot_s,
            state_bytes: 0,
            command_line,
        }
    }
}

static DEFAULT_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether new case requests use saved login states (the command line's `--saved-login`, set
/// once for the whole run before any case is made).
pub fn set_default(on: bool) {
    DEFAULT_ON.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn default_on() -> bool {
    DEFAULT_ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// `case.json`'s `login_state`: whether the case saved the state it booted or resumed one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginStateRecord {
    /// `saved` (this case booted and saved its login prompt) or `resumed` (this case started
    /// from a saved one: its first boot is the saving case's).
    pub action: String,
    pub key: String,
    pub dir: PathBuf,
    pub saved_by: String,
    pub saved_at: String,
    /// The boot the state spares a resuming case (seconds from QEMU's start to the prompt).
    pub boot_s: f64,
    /// Seconds the save (stop, migrate, copies) or the load took.
    pub seconds: f64,
    /// Why a save did not happen (the case went on without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A usable saved state.
#[derive(Debug, Clone)]
pub struct Saved {
    pub dir: PathBuf,
    pub meta: StateMeta,
    pub secrets: Secrets,
}

impl Saved {
    /// The state in `dir`, when it is complete and of this format.
    fn load(dir: &Path, key: &str) -> Option<Saved> {
        let meta: StateMeta = fsx::read_json(&dir.join(META))?;
        let secrets: Secrets = fsx::read_json(&dir.join(SECRETS))?;
        let complete = [STATE, DISK, VARS, SEED]
            .iter()
            .all(|f| dir.join(f).is_file());
        (meta.format == FORMAT && meta.key == key && complete).then(|| Saved {
            dir: dir.to_path_buf(),
            meta,
            secrets,
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE)
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
    pub fn vars(&self) -> PathBuf {
        self.dir.join(VARS)
    }
    pub fn seed(&self) -> PathBuf {
        self.dir.join(SEED)
    }

    pub fn record(&self, action: &str, seconds: f64) -> LoginStateRecord {
        LoginStateRecord {
            action: action.into(),
            key: self.meta.key.clone(),
            dir: self.dir.clone(),
            saved_by: self.meta.saved_by.clone(),
            saved_at: self.meta.saved_at.clone(),
            boot_s: self.meta.boot_s,
            seconds,
            error: None,
        }
    }
}

/// What a case does about saved login states.
#[derive(Debug)]
pub enum Plan {
    /// Not asked for, or the case is not one a state can start (see [`eligible`]).
    Off,
    /// Start from this state.
    Resume(Saved),
    /// Boot, and save at the login prompt: the key's lock is held until then.
    Save {
        key: String,
        dir: PathBuf,
        lock: fsx::FileLock,
    },
}

/// Whether a case can start from a saved login prompt: an image booted through its overlay and
/// seed (no other disks), a pflash vars store, and steps that begin with a boot until login
/// followed by the login.
pub fn eligible(case: &Case) -> bool {
    let req = &case.req;
    req.saved_login
        && req.image.is_some()
        && case.disks.is_empty()
        && case.vars_template.is_some()
        && matches!(
            req.steps.as_slice(),
            [
                Step::Boot {
                    until: Some(Target::Login),
                    ..
                },
                Step::Login { .. },
                ..
            ]
        )
}

/// The key of the machine `case` boots (blocking: hashes QEMU and the firmware, each once per
/// content).
pub fn key(case: &Case) -> anyhow::Result<String> {
    let img = case.req.image.as_ref().context("no image")?;
    let cache = fsx::hash_cache_dir();
    let hash = |p: &Path| -> anyhow::Result<String> {
        Ok(fsx::hash_file_cached(p, cache.as_deref())
            .with_context(|| format!("hashing {}", p.display()))?
            .sha256)
    };
    let mut parts = vec![
        FORMAT.to_string(),
        dry_run_command_line(case),
        format!("qemu {}", hash(&case.qemu)?),
        format!("code {}", hash(&case.req.firmware_code)?),
        format!("image {} {}", img.base.display(), img.base_sha256),
        format!("user {}", img.guest.login_user),
    ];
    if let Some(t) = &case.vars_template {
        parts.push(format!("vars {}", hash(t)?));
    }
    let digest = Sha256::digest(parts.join("\n").as_bytes());
    Ok(hex::encode(&digest[..8]))
}

fn root() -> anyhow::Result<PathBuf> {
    let root = fsx::cache_root()?.join("login-states");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

/// Decides what `case` does: resume a saved state, or boot and save one (waiting while another
/// case saves the same key, then resuming what it saved). `Off` when cancelled meanwhile.
pub async fn plan(case: &Case, cancel: &CancellationToken) -> anyhow::Result<Plan> {
    if !eligible(case) {
        return Ok(Plan::Off);
    }
    let c = case.clone();
    let (root, key) = super::disk::blocking(move || Ok((root()?, key(&c)?))).await?;
    let dir = root.join(&key);
    if let Some(s) = Saved::load(&dir, &key) {
        return Ok(Plan::Resume(s));
    }
    let lock_path = root.join(format!("{key}.lock"));
    let Some(lock) = fsx::FileLock::acquire_cancellable(&lock_path, cancel).await? else {
        return Ok(Plan::Off);
    };
    if let Some(s) = Saved::load(&dir, &key) {
        return Ok(Plan::Resume(s));
    }
    Ok(Plan::Save { key, dir, lock })
}

/// The files of a running case that a state copies.
pub struct CaseDisks<'a> {
    pub overlay: &'a Path,
    pub vars: &'a Path,
    pub seed: &'a Path,
    pub secrets: &'a Secrets,
}

/// Saves the guest of `s` (at its login prompt) into `dir`, then lets it run on. The guest is
/// stopped during the save; on an error it is continued all the same (the case goes on without
/// a state) and nothing is left in `dir`.
pub async fn save(
    s: &Session,
    dir: &Path,
    disks: CaseDisks<'_>,
    meta: StateMeta,
) -> anyhow::Result<Saved> {
    let staging = {
        let parent = dir.parent().context("a state directory has a parent")?;
        tempfile::Builder::new()
            .prefix(".saving-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?
    };
    s.qmp
        .execute_raw("stop", json!({}))
        .await
        .context("stopping the guest to save it")?;
    let saved = save_stopped(s, staging.path(), dir, &disks, meta).await;
    // The guest runs on whatever happened (after a completed migration `cont` also takes the
    // disks back, which QEMU let go of at its end).
    let cont = s.qmp.execute_raw("cont", json!({})).await;
    let saved = saved?;
    cont.context("continuing the guest after saving it")?;
    // The staging directory was renamed into place; nothing is left to remove.
    let _ = staging.keep();
    Ok(saved)
}

async fn save_stopped(
    s: &Session,
    staging: &Path,
    dir: &Path,
    disks: &CaseDisks<'_>,
    mut meta: StateMeta,
) -> anyhow::Result<Saved> {
    let state = staging.join(STATE);
    let uri = format!(
        "exec:cat > {}",
        shlex::try_quote(&state.to_string_lossy()).context("a state path QEMU's shell can take")?
    );
    s.qmp
        .execute_raw("migrate", json!({ "uri": uri }))
        .await
        .context("saving the guest (QMP migrate)")?;
    poll_migration(&s.qmp, "saving the guest").await?;
    let files = [
        (disks.overlay.to_path_buf(), staging.join(DISK)),
        (disks.vars.to_path_buf(), staging.join(VARS)),
        (disks.seed.to_path_buf(), staging.join(SEED)),
    ];
    let secrets = disks.secrets.clone();
    let (staging_dir, final_dir) = (staging.to_path_buf(), dir.to_path_buf());
    meta.state_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    let m = meta.clone();
    super::disk::blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        for (from, to) in &files {
            fsx::sparse_copy(from, to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        for f in [STATE, DISK, VARS, SEED] {
            std::fs::set_permissions(staging_dir.join(f), std::fs::Permissions::from_mode(0o600))?;
        }
        fsx::write_atomic_mode(
            &staging_dir.join(SECRETS),
            &serde_json::to_vec(&secrets)?,
            0o600,
        )?;
        fsx::write_json_atomic(&staging_dir.join(META), &m)?;
        std::fs::set_permissions(&staging_dir, std::fs::Permissions::from_mode(0o700))?;
        // A directory left without its files by a crash (the lock says nobody is saving it).
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)
                .with_context(|| format!("removing the incomplete {}", final_dir.display()))?;
        }
        std::fs::rename(&staging_dir, &final_dir).with_context(|| {
            format!(
                "moving {} to {}",
                staging_dir.display(),
                final_dir.display()
            )
        })?;
        Ok(())
    })
    .await?;
    Ok(Saved {
        dir: dir.to_path_buf(),
        meta,
        secrets: disks.secrets.clone(),
    })
}

/// Loads `saved`'s state into a QEMU started with `-incoming defer` and paused (the session
/// continues it).
pub async fn load(qmp: &super::qmp::Qmp, state: &Path) -> anyhow::Result<()> {
    let uri = format!(
        "exec:cat {}",
        shlex::try_quote(&state.to_string_lossy()).context("a state path QEMU's shell can take")?
    );
    qmp.execute_raw("migrate-incoming", json!({ "uri": uri }))
        .await
        .context("loading the saved login state (QMP migrate-incoming)")?;
    poll_migration(qmp, "loading the saved login state").await
}

/// Polls `query-migrate` until the migration completed; failed or too slow is an error.
async fn poll_migration(qmp: &super::qmp::Qmp, what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + MIGRATION_LIMIT;
    loop {
        let v = qmp
            .execute_raw("query-migrate", json!({}))
            .await
            .with_context(|| format!("{what}: query-migrate"))?;
        match v.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "completed" => return Ok(()),
            st @ ("failed" | "cancelled") => {
                let why = v
                    .get("error-desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("no reason given");
                anyhow::bail!("{what}: migration {st}: {why}");
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{what}: not done within {MIGRATION_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::launch::Accel;
    use crate::engine::case::{CaseDir, CaseRequest, ImageDisk, VarsSource};
    use crate::inputs::images::catalog::{GuestTraits, ImageFormat};

    fn steps(login: bool) -> Vec<Step> {
        let boot = Step::Boot {
            until: Some(Target::Login),
            timeout: Duration::from_secs(600),
            silence: Duration::from_secs(60),
        };
        let mut v = vec![boot];
        if login {
            v.push(Step::Login {
                timeout: Duration::from_secs(60),
            });
        }
        v
    }

    /// A case on files in `dir`: QEMU, firmware code and vars template, a base image.
    fn case(dir: &Path, steps: Vec<Step>) -> Case {
        for (f, body) in [
            ("qemu", "qemu 1"),
            ("CODE.fd", "code 1"),
            ("VARS.fd", "vars 1"),
            ("base.qcow2", "base"),
        ] {
            if !dir.join(f).exists() {
                std::fs::write(dir.join(f), body).unwrap();
            }
        }
        let guest: GuestTraits = serde_json::from_value(serde_json::json!({
            "login_user": "debian",
            "provision": "cloud-init",
            "package_manager": "apt",
            "upgrade_command": "apt-get -y full-upgrade",
            "package_query": "dpkg-query -W",
            "bootloader_packages": ["shim-signed"],
            "reported": "unaffected",
            "report_note": "",
        }))
        .unwrap();
        let mut req = CaseRequest::new(
            "c",
            CaseDir::Under(dir.to_path_buf()),
            dir.join("CODE.fd"),
            steps,
        );
        req.saved_login = true;
        req.vars = VarsSource::Template(dir.join("VARS.fd"));
        req.network = Some(Vec::new());
        req.image = Some(ImageDisk {
            name: "debian-12-local".into(),
            base: dir.join("base.qcow2"),
            base_sha256: "ab".repeat(32),
            format: ImageFormat::Qcow2,
            guest,
            source: None,
        });
        Case {
            req,
            qemu: dir.join("qemu"),
            accel: Accel::Tcg,
            cpu: "cortex-a72".into(),
            disks: Vec::new(),
            vars_template: Some(dir.join("VARS.fd")),
        }
    }

    #[test]
    fn only_a_boot_to_login_then_a_login_of_an_image_with_a_vars_store_can_resume() {
        let dir = tempfile::tempdir().unwrap();
        assert!(eligible(&case(dir.path(), steps(true))));
        let mut off = case(dir.path(), steps(true));
        off.req.saved_login = false;
        assert!(!eligible(&off), "not asked for");
        assert!(!eligible(&case(dir.path(), steps(false))), "no login after");
        let mut to_kernel = case(dir.path(), steps(true));
        to_kernel.req.steps[0] = Step::Boot {
            until: Some(Target::Kernel),
            timeout: Duration::from_secs(600),
            silence: Duration::from_secs(60),
        };
        assert!(!eligible(&to_kernel), "the guest is not at a prompt");
        let mut bios = case(dir.path(), steps(true));
        bios.vars_template = None;
        assert!(!eligible(&bios), "no vars store to save");
        let mut disk = case(dir.path(), steps(true));
        disk.disks.push(crate::core::launch::Disk {
            path: dir.path().join("base.qcow2"),
            format: crate::core::launch::DiskFormat::Raw,
            read_only: false,
            snapshot: false,
        });
        assert!(!eligible(&disk), "a disk the state does not copy");
        let mut no_image = case(dir.path(), steps(true));
        no_image.req.image = None;
        assert!(!eligible(&no_image));
    }

    /// A state is found again only for the same machine: the key changes with QEMU's, the
    /// firmware's and the vars template's content, the image, the memory, the CPU and the user,
    /// and not with the steps or the case's name.
    #[test]
    fn the_key_names_the_machine_and_its_inputs_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let k = key(&case(d, steps(true))).unwrap();
        assert_eq!(k.len(), 16);
        let mut same = case(d, steps(true));
        same.req.name = "another".into();
        same.req.steps.push(Step::SnapshotPackages {
            label: "before".into(),
        });
        assert_eq!(key(&same).unwrap(), k);
        let mut variants: Vec<Case> = Vec::new();
        let mut c = case(d, steps(true));
        c.req.memory_mib = 1536;
        variants.push(c);
        let mut c = case(d, steps(true));
        c.cpu = "max".into();
        variants.push(c);
        let mut c = case(d, steps(true));
        c.req.image.as_mut().unwrap().base_sha256 = "cd".repeat(32);
        variants.push(c);
        let mut c = case(d, steps(true));
        c.req.image.as_mut().unwrap().guest.login_user = "fedora".into();
        variants.push(c);
        for v in &variants {
            assert_ne!(key(v).unwrap(), k);
        }
        // Same paths, new content (hashes are remembered by inode, size and times: new files).
        for (f, body) in [
            ("qemu", "qemu 2"),
            ("CODE.fd", "code 2"),
            ("VARS.fd", "vars 2"),
        ] {
            let before = key(&case(d, steps(true))).unwrap();
            std::fs::remove_file(d.join(f)).unwrap();
            std::fs::write(d.join(f), body).unwrap();
            assert_ne!(key(&case(d, steps(true))).unwrap(), before, "{f}");
        }
    }
}
