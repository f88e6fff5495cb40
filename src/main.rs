//! The `handoff` binary: harden the process, parse arguments, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    handoff::home::harden_process();
    let cli = match handoff::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the whole help when no command is given.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            // Bad arguments are one line too: what clap found, without its usage block.
            let rendered = e.render().to_string();
            let line: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .flat_map(str::split_whitespace)
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // Logs are opt-in: a command's own output is its result and its one-line error.
    if let Ok(level) = std::env::var("HANDOFF_LOG") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_max_level(match level.as_str() {
                "debug" => tracing::Level::DEBUG,
                "info" => tracing::Level::INFO,
                _ => tracing::Level::WARN,
            })
            .init();
    }
    let result = handoff::cli::run(cli);
    // A reader that went away (`| head`) ends output quietly, with the status of a program
    // stopped by SIGPIPE.
    let output_failed = handoff::cli::output::failure_status();
    match result {
        Ok(_) if output_failed.is_some() => ExitCode::from(output_failed.unwrap_or(1)),
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // One line whatever the source said (an SQL error can quote a multi-line query).
            let message = e.to_string();
            let line: Vec<&str> = message.split_whitespace().collect();
            eprintln!("error: {}", line.join(" "));
            ExitCode::from(e.exit() as u8)
        }
    }
}
