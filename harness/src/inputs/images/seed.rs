//! cloud-init NoCloud provisioning: per-run user-data and meta-data on a small FAT volume
//! labelled CIDATA (every cloud-init version accepts vfat as well as iso9660), made with `fatfs`.
//!
//! user-data is `#cloud-config` followed by JSON: JSON is YAML, so no YAML writer (and none of
//! its quoting pitfalls) is needed.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::json;

/// Who the guest is told to create, and what it is called.
#[derive(Debug, Clone, Serialize)]
pub struct SeedConfig {
    pub user: String,
    pub password: String,
    pub hostname: String,
    pub instance_id: String,
}

impl SeedConfig {
    /// A user with a fresh random password.
    pub fn new(user: &str, hostname: &str, instance_id: &str) -> std::io::Result<SeedConfig> {
        Ok(SeedConfig {
            user: user.into(),
            password: random_password()?,
            hostname: hostname.into(),
            instance_id: instance_id.into(),
        })
    }
}

/// 20 characters from the system's random source (letters and digits: nothing a serial line or
/// a shell could mangle).
pub fn random_password() -> std::io::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// The user-data document.
pub fn user_data(cfg: &SeedConfig) -> String {
    let doc = json!({
        "hostname": cfg.hostname,
        "users": [{
            "name": cfg.user,
            "lock_passwd": false,
            "plain_text_passwd": cfg.password,
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
        }],
        "ssh_pwauth": false,
        // A login prompt on the first serial port even where the kernel command line does not
        // name it as a console (systemd only starts serial gettys for console= ports).
        "bootcmd": [["systemctl", "start", "--no-block", "serial-getty@ttyAMA0.service"]],
    });
    format!(
        "#cloud-config\n{}\n",
        serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
    )
}

pub fn meta_data(cfg: &SeedConfig) -> String {
    let doc = json!({ "instance-id": cfg.instance_id, "local-hostname": cfg.hostname });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
    )
}

/// Size of the seed volume: small, but large enough for fatfs to format as FAT12.
const SEED_SIZE: u64 = 1024 * 1024;

/// Writes the seed volume to `path` (a raw FAT image labelled CIDATA), atomically.
pub fn write_seed(path: &Path, cfg: &SeedConfig) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".seed-").tempfile_in(dir)?;
    tmp.as_file().set_len(SEED_SIZE)?;
    {
        let mut stream = fscommon::BufStream::new(tmp.as_file_mut());
        fatfs::format_volume(
            &mut stream,
            fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
        )?;
        let fs = fatfs::FileSystem::new(stream, fatfs::FsOptions::new())?;
        for (name, content) in [("user-data", user_data(cfg)), ("meta-data", meta_data(cfg))] {
            let mut f = fs.root_dir().create_file(name)?;
            f.truncate()?;
            f.write_all(content.as_bytes())?;
        }
        fs.unmount()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SeedConfig {
        SeedConfig {
            user: "bw".into(),
            password: "pw\"quote".into(),
            hostname: "h".into(),
            instance_id: "i-1".into(),
        }
    }

    #[test]
    fn user_data_is_cloud_config_whose_body_is_json() {
        let ud = user_data(&cfg());
        let body = ud
            .strip_prefix("#cloud-config\n")
            .expect("the cloud-config header");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["users"][0]["name"], "bw");
        assert_eq!(v["users"][0]["plain_text_passwd"], "pw\"quote");
        assert_eq!(v["users"][0]["lock_passwd"], false);
        let md: serde_json::Value = serde_json::from_str(&meta_data(&cfg())).unwrap();
        assert_eq!(md["instance-id"], "i-1");
    }

    #[test]
    fn seed_volume_is_labelled_cidata_with_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.img");
        write_seed(&p, &cfg()).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let fs =
            fatfs::FileSystem::new(fscommon::BufStream::new(f), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "CIDATA");
        let mut ud = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut ud)
            .unwrap();
        assert_eq!(ud, user_data(&cfg()));
        let names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.contains(&"meta-data".to_string()), "{names:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn passwords_are_random_and_plain() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
