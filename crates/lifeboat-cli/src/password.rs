//! Where the repository password comes from: a command, a file, or the terminal, in that order.

use std::io::IsTerminal;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::GlobalArgs;

/// The password, wiped from memory when dropped.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl AsRef<[u8]> for Password {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Password {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn first_line(text: String) -> Zeroizing<String> {
    let text = Zeroizing::new(text);
    Zeroizing::new(text.lines().next().unwrap_or_default().to_string())
}

/// Gets a new password (for `key add` and `key passwd`) from a file or, on a terminal, twice
/// from the prompt.
pub fn obtain_new(file: Option<&std::path::Path>) -> Result<Password> {
    let password = match file {
        Some(path) => first_line(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read new password file {}", path.display()))?,
        ),
        None if std::io::stdin().is_terminal() => {
            let first = Zeroizing::new(rpassword::prompt_password("new password: ")?);
            let again = Zeroizing::new(rpassword::prompt_password("repeat new password: ")?);
            if *first != *again {
                bail!("the passwords differ");
            }
            first
        }
        None => bail!("no new password given: use --new-password-file or run on a terminal"),
    };
    if password.is_empty() {
        bail!("the new password is empty");
    }
    Ok(Password(password))
}

/// Gets the password; `new` asks twice on a terminal (for `init`).
pub fn obtain(global: &GlobalArgs, new: bool) -> Result<Password> {
    let password = if let Some(command) = &global.password_command {
        let output = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::inherit())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| "cannot run the password command")?;
        if !output.status.success() {
            bail!("the password command failed ({})", output.status);
        }
        first_line(
            String::from_utf8(output.stdout)
                .context("the password command printed non-UTF-8 text")?,
        )
    } else if let Some(path) = &global.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?;
        first_line(text)
    } else if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(rpassword::prompt_password("repository password: ")?);
        if new {
            let again = Zeroizing::new(rpassword::prompt_password("repeat password: ")?);
            if *first != *again {
                bail!("the passwords differ");
            }
        }
        first
    } else {
        bail!(
            "no password given: set LIFEBOAT_PASSWORD_FILE, pass --password-command, or run on a terminal"
        );
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(Password(password))
}
