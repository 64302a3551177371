//! `zos-chain-node`: validator and full node of the Zero-OS compute grid chain.

mod chain_spec;
mod cli;
mod command;
mod rpc;
mod service;

fn main() -> sc_cli::Result<()> {
    command::run()
}
