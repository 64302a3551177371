//! Fetching the release manifest from the boot service and deciding whether to run it.
//!
//! The transport is plain HTTP on purpose: the manifest is trusted for its signature by the
//! release key in the initramfs, and everything it names is content-addressed.

use std::{io::Read, time::SystemTime};

use zos_release::{manifest, BootParams, ManifestError, ReleaseManifest, VerifyingKey, Version};

/// Why no manifest could be run this time.
#[derive(Debug)]
pub enum FetchError {
    /// The boot service could not be reached or answered with an error.
    Transport(String),
    /// The manifest was fetched and refused.
    Refused(ManifestError),
    /// A signed manifest, but not the release the chain set for this runmode.
    NotTheChainsRelease { chain: Version, served: Version },
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Transport(e) => write!(f, "the boot service did not serve the manifest: {e}"),
            FetchError::Refused(e) => write!(f, "REFUSED: {e}"),
            FetchError::NotTheChainsRelease { chain, served } => write!(
                f,
                "REFUSED: the boot service serves release {served}, but the chain set {chain} (or a manifest with another hash) for this runmode"
            ),
        }
    }
}

/// A fetched body (at most `limit` bytes) and the server's clock, if it said.
pub struct Fetched {
    pub body: Option<Vec<u8>>,
    pub server_time: Option<SystemTime>,
}

/// GETs `url`; a 404 is `body: None` (an absent signature is a refusal, not a network error).
pub fn get(url: &str, limit: usize) -> Result<Fetched, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(20))
        .build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, r)) => {
            let server_time = r
                .header("date")
                .and_then(|d| httpdate::parse_http_date(d).ok());
            return Ok(Fetched {
                body: None,
                server_time,
            });
        }
        Err(e) => return Err(format!("GET {url}: {e}")),
    };
    let server_time = response
        .header("date")
        .and_then(|d| httpdate::parse_http_date(d).ok());
    let mut body = Vec::new();
    response
        .into_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Fetched {
        body: Some(body),
        server_time,
    })
}

/// Where a runmode's manifest is published on the boot service: a given version's, or the
/// current one.
pub fn manifest_url(params: &BootParams, version: Option<Version>) -> String {
    match version {
        Some(v) => format!(
            "{}/release/{}/{v}/manifest.json",
            params.boot, params.runmode
        ),
        None => format!("{}/release/{}/manifest.json", params.boot, params.runmode),
    }
}

/// One attempt: fetch `manifest.json` and `manifest.sig`, verify them against the release key,
/// the node's runmode and the version floor, and, when the chain decided one, against the
/// chain's release (`version`, BLAKE3 of the manifest). Returns the server's clock alongside.
pub fn fetch_verified(
    params: &BootParams,
    key: &VerifyingKey,
    floor: Option<Version>,
    chain: Option<(Version, [u8; 32])>,
) -> Result<(ReleaseManifest, Option<SystemTime>), FetchError> {
    let url = manifest_url(params, chain.map(|(v, _)| v));
    let json = get(&url, manifest::MAX_MANIFEST_BYTES).map_err(FetchError::Transport)?;
    let server_time = json.server_time;
    let json = json.body.ok_or_else(|| {
        FetchError::Transport(format!(
            "{url}: 404, no release published for {}",
            params.runmode
        ))
    })?;
    let sig = get(&format!("{}.sig", url.trim_end_matches(".json")), 1024)
        .map_err(FetchError::Transport)?;
    let manifest = manifest::verify(&json, sig.body.as_deref(), key, params.runmode, floor)
        .map_err(FetchError::Refused)?;
    if let Some((version, hash)) = chain {
        if manifest.version != version || *blake3::hash(&json).as_bytes() != hash {
            return Err(FetchError::NotTheChainsRelease {
                chain: version,
                served: manifest.version,
            });
        }
    }
    Ok((manifest, server_time))
}

/// The placeholders of a service's command line filled from the boot parameters, in one pass
/// (a value is never expanded again).
pub fn expand(arg: &str, params: &BootParams, release: Version) -> String {
    let farm = params.farm.to_string();
    let release = release.to_string();
    let values: [(&str, &str); 5] = [
        ("{version}", &release),
        ("{farm}", &farm),
        ("{chain}", &params.chain),
        ("{hub}", &params.hub),
        ("{runmode}", params.runmode.as_str()),
    ];
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    'scan: while !rest.is_empty() {
        for (name, value) in values {
            if let Some(after) = rest.strip_prefix(name) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What the chain said about this node's release, as core-0 acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainDecision {
    /// Run exactly this release (version and BLAKE3 of its manifest).
    Run(Version, [u8; 32]),
    /// The chain has not chosen a release for this node now: why, in words.
    Undecided(String),
}

/// Which manifest to fetch, or why to wait. On `dev` a node without the chain's decision runs
/// the boot service's current signed release; on `test` and `main` it runs only what the chain
/// chose for it, and waits otherwise: an unreachable or lying RPC endpoint, or a halted
/// rollout, must not make it run a release the chain did not choose for it now.
pub fn choose(
    params: &BootParams,
    decision: &ChainDecision,
) -> Result<Option<(Version, [u8; 32])>, String> {
    match decision {
        ChainDecision::Run(version, hash) => Ok(Some((*version, *hash))),
        ChainDecision::Undecided(_) if params.runmode == zos_release::Runmode::Dev => Ok(None),
        ChainDecision::Undecided(why) => Err(format!(
            "waiting for the chain to choose a release for farm {} on {}: {why}",
            params.farm, params.runmode
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_arguments_are_filled_from_the_boot_line() {
        let p = BootParams::parse(
            "farm=3 runmode=dev chain=ws://10.0.2.2:9944 hub=http://h boot=http://b",
        )
        .unwrap();
        let v = Version::new(1, 2, 3);
        assert_eq!(expand("--farm={farm}", &p, v), "--farm=3");
        assert_eq!(
            expand(
                "/bin/x --chain {chain} --hub={hub} {runmode} {version}",
                &p,
                v
            ),
            "/bin/x --chain ws://10.0.2.2:9944 --hub=http://h dev 1.2.3"
        );
        assert_eq!(manifest_url(&p, None), "http://b/release/dev/manifest.json");
        assert_eq!(
            manifest_url(&p, Some(Version::new(1, 2, 3))),
            "http://b/release/dev/1.2.3/manifest.json"
        );
        // One pass: a value holding a placeholder's name is not expanded again.
        let q = BootParams {
            hub: "http://h/{farm}".into(),
            ..p.clone()
        };
        assert_eq!(expand("{hub}{farm}", &q, v), "http://h/{farm}3");
        assert_eq!(expand("{unknown}{farm", &q, v), "{unknown}{farm");
    }

    #[test]
    fn test_and_main_nodes_run_only_what_the_chain_chose() {
        let mut p = BootParams::parse("farm=3 runmode=dev chain=ws://c hub=http://h boot=http://b")
            .unwrap();
        let undecided = ChainDecision::Undecided("the chain cannot be asked".into());
        let chosen = ChainDecision::Run(Version::new(1, 0, 0), [1; 32]);
        assert_eq!(choose(&p, &undecided), Ok(None));
        assert_eq!(
            choose(&p, &chosen),
            Ok(Some((Version::new(1, 0, 0), [1; 32])))
        );
        for runmode in [zos_release::Runmode::Test, zos_release::Runmode::Main] {
            p.runmode = runmode;
            let wait = choose(&p, &undecided).unwrap_err();
            assert!(
                wait.contains("waiting for the chain") && wait.contains("cannot be asked"),
                "{wait}"
            );
            assert!(choose(&p, &chosen).is_ok());
        }
    }
}
