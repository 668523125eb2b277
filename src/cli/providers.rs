//! `provider add`: a `[[provider]]` block from a preset, appended to the
//! config file.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use relogin_farm::config::{self, presets};

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Append a [[provider]] block using preset PRESET to the config file
    /// (nothing else in it changes) and say what is left to fill in.
    Add {
        /// The preset (see README, "Providers").
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(presets::names()))]
        preset: String,
        /// The provider's name in the farm (default: the preset's).
        #[arg(long)]
        name: Option<String>,
    },
}

pub fn run(config_path: &Path, command: &ProviderCommand) -> Result<()> {
    match command {
        ProviderCommand::Add { preset, name } => add(config_path, preset, name.as_deref()),
    }
}

fn add(config_path: &Path, preset: &str, name: Option<&str>) -> Result<()> {
    let Some(preset) = presets::find(preset) else {
        bail!(
            "no preset {preset:?}; presets: {}",
            presets::names().join(", ")
        );
    };
    let name = name.unwrap_or(preset.name);
    if let Err(e) = config::parse_provider_name(name) {
        bail!("invalid provider name {name:?}: {e}");
    }
    let text = std::fs::read_to_string(config_path).with_context(|| {
        format!(
            "cannot read {} (relogin-farm init writes one)",
            config_path.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", config_path.display()))?;
    let taken = table
        .get("provider")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .any(|p| p.get("name").and_then(toml::Value::as_str) == Some(name));
    if taken {
        bail!(
            "{} already has a provider named {name:?}; choose another with --name",
            config_path.display()
        );
    }
    let block = preset.block(name);
    // Appended, so every comment and key already there stays as it was.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(config_path)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let separator = if text.ends_with('\n') || text.is_empty() {
        ""
    } else {
        "\n"
    };
    file.write_all(format!("{separator}{block}").as_bytes())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("added to {}:\n{block}", config_path.display());
    println!(
        "it uses these keys of preset {:?} (set any of them in the block to change it):",
        preset.name
    );
    for line in preset
        .keys
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        println!("    {line}");
    }
    if preset.needs.is_empty() && !preset.needs_secret {
        println!("nothing left to fill in");
    } else {
        println!("still to fill in:");
        for (key, what) in preset.needs {
            println!("    {key}: {what}");
        }
        if preset.needs_secret {
            println!(
                "    the client secret: in {} (or client_secret_file in the block)",
                config::provider_secret_var(name)
            );
        }
    }
    println!(
        "then check it with: relogin-farm --config {} doctor",
        config_path.display()
    );
    Ok(())
}
