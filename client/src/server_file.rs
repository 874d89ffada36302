//! Where the server is: from the agent's settings, or from the file `blitzen-server
//! --address-file` writes (read again before each attempt to connect).

use blitzen_net::PeerTls;

use crate::{AgentConfig, DEFAULT_PORT};

/// What `blitzen-server --address-file` wrote: the server's `host:port`, and the fingerprint
/// of its certificate when it encrypts.
pub(crate) fn read_server_file(path: &std::path::Path) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = |key: &str| {
        text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=')).map(str::trim)
    };
    let server = value("server")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{} has no `server=HOST:PORT` line", path.display()))?;
    Ok((server.to_string(), value("fingerprint").map(str::to_string)))
}

/// The server to connect to now, and how: from the agent's settings, or from its server file.
pub(crate) fn where_the_server_is(config: &AgentConfig) -> Result<(String, PeerTls), String> {
    let Some(path) = &config.server_file else {
        return Ok((config.server.clone(), config.tls.clone()));
    };
    let (server, fingerprint) = read_server_file(path)?;
    let tls = PeerTls::from_flags(config.tls.plaintext, fingerprint.as_deref(), None)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((blitzen_net::with_default_port(&server, DEFAULT_PORT), tls))
}
