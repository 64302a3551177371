//! The commands' environment: the variables they get and where their programs are found.

use std::{
    ffi::{OsStr, OsString},
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::PermissionsExt,
    },
    path::{Component, Path, PathBuf},
    process::Command,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment of the commands: the defaults, overridden by the tenant's variables.
pub struct Env {
    tenant: Vec<(OsString, OsString)>,
}

impl Env {
    /// Reads `dir` (one file per variable, as /init exports them); a missing one means none.
    pub fn load(dir: &Path) -> Self {
        let mut tenant = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.is_empty() || name.as_bytes().contains(&b'=') {
                continue;
            }
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            if let Ok(mut value) = std::fs::read(&path) {
                // As /init's `$(cat file)`: the entrypoint and sessions see the same values.
                while value.last() == Some(&b'\n') {
                    value.pop();
                }
                if !value.contains(&0) {
                    tenant.push((name, OsString::from_vec(value)));
                }
            }
        }
        tenant.sort();
        Self { tenant }
    }

    fn get(&self, name: &str) -> Option<&OsStr> {
        self.tenant
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// The directories commands are looked up in.
    fn path(&self) -> &OsStr {
        self.get("PATH").unwrap_or(OsStr::new(DEFAULT_PATH))
    }

    pub fn apply(&self, cmd: &mut Command, tty: bool) {
        cmd.env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOME", "/root")
            .env("TERM", if tty { "xterm-256color" } else { "dumb" })
            .envs(self.tenant.iter().map(|(k, v)| (k, v)));
    }
}

/// Where `name` runs from, as seen inside `root`: itself when it names a path, else the first
/// executable file of that name in the `PATH` directories of the root.
pub fn find_program(root: &Path, env: &Env, name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    env.path()
        .as_bytes()
        .split(|b| *b == b':')
        .map(|dir| Path::new(OsStr::from_bytes(dir)))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|inside| {
            resolve_in_root(root, inside)
                .and_then(|host| std::fs::metadata(host).ok())
                .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The path on this side of the chroot of `path` inside `root`, following symlinks as they
/// resolve inside the root (an absolute link target is relative to the root, `..` stops at
/// it). `None` when a component is missing or the links loop.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<OsString> = Vec::new();
    let push_reversed = |pending: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(s) => pending.push(s.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                _ => {}
            }
        }
    };
    push_reversed(&mut pending, path);
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
        if !meta.file_type().is_symlink() {
            resolved = next;
            continue;
        }
        links += 1;
        if links > 40 {
            return None;
        }
        let target = std::fs::read_link(root.join(&next)).ok()?;
        if target.is_absolute() {
            resolved = PathBuf::new();
        }
        push_reversed(&mut pending, &target);
    }
    Some(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn commands_are_found_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in ["usr/bin", "bin", "sbin"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join("usr/bin/busybox"), b"").unwrap();
        std::fs::set_permissions(
            r.join("usr/bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // An absolute link resolves inside the root, not on this side.
        symlink("/usr/bin/busybox", r.join("bin/sh")).unwrap();
        symlink("../usr/bin/busybox", r.join("sbin/init")).unwrap();
        std::fs::write(r.join("bin/data"), b"").unwrap();
        symlink("/bin/loop", r.join("bin/loop")).unwrap();
        let env = Env { tenant: vec![] };
        assert_eq!(find_program(r, &env, "sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(
            find_program(r, &env, "init"),
            Some(PathBuf::from("/sbin/init"))
        );
        assert_eq!(find_program(r, &env, "data"), None, "not executable");
        assert_eq!(find_program(r, &env, "loop"), None);
        assert_eq!(find_program(r, &env, "nothing"), None);
        assert_eq!(find_program(r, &env, "./x"), Some(PathBuf::from("./x")));
        assert_eq!(
            resolve_in_root(r, Path::new("/../../bin/sh")),
            Some(r.join("usr/bin/busybox"))
        );
        let env = Env {
            tenant: vec![("PATH".into(), "relative:/sbin".into())],
        };
        assert_eq!(find_program(r, &env, "sh"), None);
        assert_eq!(
            find_program(r, &env, "init"),
            Some(PathBuf::from("/sbin/init"))
        );
    }

    #[test]
    fn the_tenant_environment_is_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("GREETING"), b"hello world\n").unwrap();
        std::fs::write(dir.path().join("PATH"), b"/opt/bin").unwrap();
        std::fs::create_dir(dir.path().join("SUBDIR")).unwrap();
        let env = Env::load(dir.path());
        assert_eq!(env.get("GREETING"), Some(OsStr::new("hello world")));
        assert_eq!(env.path(), OsStr::new("/opt/bin"));
        assert_eq!(env.get("SUBDIR"), None);
        let none = Env::load(&dir.path().join("missing"));
        assert_eq!(none.path(), OsStr::new(DEFAULT_PATH));
    }
}
