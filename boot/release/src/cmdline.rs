//! The node's settings from the kernel command line:
//! `farm=<id> runmode=<dev|test|main> chain=<url> hub=<url> boot=<url>`.
//!
//! The command line comes from the boot service's iPXE script or the farm's boot image, so a
//! farmer configures a node by choosing what to boot, never by installing anything.

use std::{fmt, str::FromStr};

/// Which network a node serves; each runmode follows its own releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runmode {
    Dev,
    Test,
    Main,
}

impl Runmode {
    pub const ALL: [Runmode; 3] = [Runmode::Dev, Runmode::Test, Runmode::Main];
    pub fn as_str(self) -> &'static str {
        match self {
            Runmode::Dev => "dev",
            Runmode::Test => "test",
            Runmode::Main => "main",
        }
    }
}

impl fmt::Display for Runmode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Runmode {
    type Err = CmdlineError;
    fn from_str(s: &str) -> Result<Self, CmdlineError> {
        Runmode::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CmdlineError::BadRunmode(clip(s)))
    }
}

/// What the node was told to be at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootParams {
    pub farm: u32,
    pub runmode: Runmode,
    /// The chain's RPC endpoint (`ws://`/`wss://`).
    pub chain: String,
    /// The image hub the OS image and workload images come from (`http://`/`https://`).
    pub hub: String,
    /// The boot service that serves release manifests (`http://`/`https://`).
    pub boot: String,
}

/// Why a command line does not describe a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("the kernel command line has no `{0}=`: boot the node from its farm's iPXE script or boot image")]
    Missing(&'static str),
    #[error("`{0}=` is given twice on the kernel command line")]
    Duplicate(&'static str),
    #[error("farm=`{0}` is not a farm id (a decimal number)")]
    BadFarm(String),
    #[error("runmode=`{0}` is not one of dev, test, main")]
    BadRunmode(String),
    #[error(
        "{key}=`{value}` is not a {schemes} URL with a host (letters, digits and -._~:/[]@% only)"
    )]
    BadUrl {
        key: &'static str,
        value: String,
        schemes: &'static str,
    },
}

/// At most this much of a bad value is echoed back: the command line is attacker-supplied
/// when the boot server is not the farmer's own.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn check_url(
    key: &'static str,
    value: &str,
    schemes: &'static [&'static str],
) -> Result<String, CmdlineError> {
    let bad = || CmdlineError::BadUrl {
        key,
        value: clip(value),
        schemes: if schemes[0] == "ws" {
            "ws/wss"
        } else {
            "http/https"
        },
    };
    let (scheme, rest) = value.split_once("://").ok_or_else(bad)?;
    if !schemes.contains(&scheme) {
        return Err(bad());
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Plain URL characters only: the values reach service command lines (shells included).
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~:/[]@%".contains(c);
    if host.is_empty() || host.starts_with(':') || value.len() > 512 || !value.chars().all(plain) {
        return Err(bad());
    }
    Ok(value.trim_end_matches('/').to_string())
}

impl BootParams {
    /// Reads the node's settings from a kernel command line; unknown words (`console=`,
    /// `quiet`, ...) belong to the kernel and are ignored.
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        const KEYS: [&str; 5] = ["farm", "runmode", "chain", "hub", "boot"];
        let mut found: [Option<&str>; 5] = [None; 5];
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            if let Some(i) = KEYS.iter().position(|k| *k == key) {
                if found[i].replace(value).is_some() {
                    return Err(CmdlineError::Duplicate(KEYS[i]));
                }
            }
        }
        let get = |i: usize| found[i].ok_or(CmdlineError::Missing(KEYS[i]));
        let farm = get(0)?;
        let farm = if farm.bytes().all(|b| b.is_ascii_digit()) {
            farm.parse().ok()
        } else {
            None
        }
        .ok_or_else(|| CmdlineError::BadFarm(clip(farm)))?;
        Ok(BootParams {
            farm,
            runmode: get(1)?.parse()?,
            chain: check_url("chain", get(2)?, &["ws", "wss"])?,
            hub: check_url("hub", get(3)?, &["http", "https"])?,
            boot: check_url("boot", get(4)?, &["http", "https"])?,
        })
    }

    /// The words that make a kernel command line describing this node (the inverse of
    /// [`BootParams::parse`]).
    pub fn to_cmdline(&self) -> String {
        format!(
            "farm={} runmode={} chain={} hub={} boot={}",
            self.farm, self.runmode, self.chain, self.hub, self.boot
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "console=ttyS0 quiet farm=7 runmode=test chain=ws://10.0.2.2:9944 hub=http://10.0.2.2:8080/ boot=http://10.0.2.2:8081";

    #[test]
    fn a_farm_boot_line_is_read_and_written_back() {
        let p = BootParams::parse(GOOD).unwrap();
        assert_eq!(p.farm, 7);
        assert_eq!(p.runmode, Runmode::Test);
        assert_eq!(p.hub, "http://10.0.2.2:8080");
        assert_eq!(BootParams::parse(&p.to_cmdline()).unwrap(), p);
    }

    #[test]
    fn bad_lines_get_typed_errors() {
        let cases: [(&str, CmdlineError); 8] = [
            (
                "farm=1 runmode=dev chain=ws://a$(reboot) hub=http://b boot=http://c",
                CmdlineError::BadUrl {
                    key: "chain",
                    value: "ws://a$(reboot)".into(),
                    schemes: "ws/wss",
                },
            ),
            (
                "farm=1 runmode=dev chain=ws://a hub=http://b",
                CmdlineError::Missing("boot"),
            ),
            ("farm=1 farm=2", CmdlineError::Duplicate("farm")),
            (
                "farm=-1 runmode=dev chain=ws://a hub=http://b boot=http://c",
                CmdlineError::BadFarm("-1".into()),
            ),
            (
                "farm=4294967296 runmode=dev chain=ws://a hub=http://b boot=http://c",
                CmdlineError::BadFarm("4294967296".into()),
            ),
            (
                "farm=1 runmode=prod chain=ws://a hub=http://b boot=http://c",
                CmdlineError::BadRunmode("prod".into()),
            ),
            (
                "farm=1 runmode=dev chain=http://a hub=http://b boot=http://c",
                CmdlineError::BadUrl {
                    key: "chain",
                    value: "http://a".into(),
                    schemes: "ws/wss",
                },
            ),
            (
                "farm=1 runmode=dev chain=ws://a hub=http:///x boot=http://c",
                CmdlineError::BadUrl {
                    key: "hub",
                    value: "http:///x".into(),
                    schemes: "http/https",
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(BootParams::parse(line).unwrap_err(), want, "{line}");
        }
    }
}
