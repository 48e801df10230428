//! Secrets from files: every command-line setting read from an environment variable `NAME`
//! can instead be read from the file named by `NAME_FILE` (the convention of Docker and
//! Kubernetes secrets, which are mounted as files), so a secret never has to sit in the
//! environment, where `docker inspect` and child processes see it. The file's content, without
//! its trailing newline, is the value; `--help` never shows it. Only the settings of the
//! subcommand being run are read, so a file meant for another service cannot stop this one.
//! (`ALERT_WEBHOOK_URL_FILE` is read the same way by [`crate::alerts`].)

use anyhow::Context as _;
use clap::Command;

/// `command` with the value of every `NAME_FILE` file as the default of the argument read
/// from `NAME`, along the subcommands `args` (the command line) names.
pub fn from_files(command: Command, args: &[String]) -> anyhow::Result<Command> {
    from_files_with(command, args, &|name| std::env::var_os(name))
}

fn from_files_with(
    mut command: Command,
    args: &[String],
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> anyhow::Result<Command> {
    let read: Vec<(clap::Id, String)> = command
        .get_arguments()
        .filter_map(|arg| Some((arg.get_id().clone(), arg.get_env()?.to_str()?.to_string())))
        .collect();
    for (id, name) in read {
        let file_name = format!("{name}_FILE");
        let Some(path) = env(&file_name) else {
            continue;
        };
        if env(&name).is_some() {
            anyhow::bail!("{name} and {file_name} are both set: set one of them");
        }
        let value = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{file_name}: cannot read {}; mount the secret there or unset the variable",
                path.to_string_lossy()
            )
        })?;
        let value = value.strip_suffix('\n').unwrap_or(&value);
        let value = value.strip_suffix('\r').unwrap_or(value).to_string();
        command = command.mut_arg(id, |arg| {
            arg.default_value(value)
                .hide_default_value(true)
                .required(false)
        });
    }
    // The subcommand run: the first word of the command line that names one.
    let invoked = args.iter().enumerate().find_map(|(at, word)| {
        command
            .find_subcommand(word)
            .map(|sub| (sub.get_name().to_string(), at))
    });
    if let Some((name, at)) = invoked {
        let mut failed = None;
        command = command.mut_subcommand(&name, |sub| {
            match from_files_with(sub.clone(), &args[at + 1..], env) {
                Ok(sub) => sub,
                Err(err) => {
                    failed = Some(err);
                    sub
                }
            }
        });
        if let Some(err) = failed {
            return Err(err);
        }
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsString;

    use clap::{Arg, ArgMatches};

    use super::*;

    fn cli() -> Command {
        Command::new("herald").subcommand(
            Command::new("ingress").arg(
                Arg::new("secret")
                    .long("secret")
                    .env("THE_SECRET")
                    .hide_env_values(true)
                    .required(true),
            ),
        )
    }

    fn parse(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<ArgMatches> {
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let words: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let command = from_files_with(cli(), &words, &|name| env.get(name).cloned())?;
        Ok(command.try_get_matches_from(args)?)
    }

    fn secret(matches: &ArgMatches) -> String {
        let (_, sub) = matches.subcommand().unwrap();
        sub.get_one::<String>("secret").unwrap().clone()
    }

    #[test]
    fn a_file_gives_the_value_without_its_newline_and_help_hides_it() {
        let dir = std::env::temp_dir().join(format!("secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let path = file.to_str().unwrap();
        let matches = parse(&[("THE_SECRET_FILE", path)], &["herald", "ingress"]).unwrap();
        assert_eq!(secret(&matches), "s3cret-value");
        // A flag still wins over the file.
        let matches = parse(
            &[("THE_SECRET_FILE", path)],
            &["herald", "ingress", "--secret", "flag"],
        )
        .unwrap();
        assert_eq!(secret(&matches), "flag");
        let env = HashMap::from([("THE_SECRET_FILE".to_string(), OsString::from(path))]);
        let words = ["herald".to_string(), "ingress".to_string()];
        let mut command = from_files_with(cli(), &words, &|name| env.get(name).cloned()).unwrap();
        let help = command
            .find_subcommand_mut("ingress")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("s3cret"), "{help}");
    }

    #[test]
    fn a_missing_file_or_both_variables_are_clear_errors() {
        let err = parse(
            &[("THE_SECRET_FILE", "/nonexistent/secret")],
            &["herald", "ingress"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("THE_SECRET_FILE: cannot read /nonexistent/secret"),
            "{err}"
        );
        let err = parse(
            &[("THE_SECRET_FILE", "/x"), ("THE_SECRET", "y")],
            &["herald", "ingress"],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "THE_SECRET and THE_SECRET_FILE are both set: set one of them"
        );
    }

    #[test]
    fn another_subcommand_s_files_are_not_read() {
        // `herald token` does not read the ingress's secret, even from a missing file.
        let command = Command::new("herald")
            .subcommand(Command::new("token"))
            .subcommand(cli().find_subcommand("ingress").unwrap().clone());
        let env = HashMap::from([(
            "THE_SECRET_FILE".to_string(),
            OsString::from("/nonexistent/secret"),
        )]);
        let words = ["herald".to_string(), "token".to_string()];
        assert!(from_files_with(command, &words, &|name| env.get(name).cloned()).is_ok());
    }

    #[test]
    fn without_a_file_nothing_changes() {
        let err = parse(&[], &["herald", "ingress"]).unwrap_err();
        assert!(err.to_string().contains("--secret"), "{err}");
    }
}
