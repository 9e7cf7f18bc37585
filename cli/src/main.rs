//! The installable `switchyard`: the operator's commands, every invoke through the
//! deployed Lambda. It links no function and no local cell (`cargo install --path cli`).

fn main() -> std::process::ExitCode {
    switchyard_cli::main(switchyard_cli::Tool::REMOTE)
}
