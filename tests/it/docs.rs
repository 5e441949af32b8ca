use std::collections::BTreeSet;

use crate::util::*;

/// Keys the daemon accepts that the README does not show: `workers`, kept
/// (as 1 alone) for configuration files of earlier releases.
const UNSHOWN: [&str; 1] = ["workers"];

/// The keys the daemon accepts in `section` ("" for the top level), as its
/// own refusal of an unknown key lists them.
fn accepted(dir: &TempDir, section: &str) -> BTreeSet<String> {
    let f = dir.write("c.toml", &format!("{section}\nzzz_unknown = 1\n"));
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&f).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let expected = text.split_once("expected").unwrap_or_else(|| panic!("{section}: {text}")).1;
    expected.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The README's configuration block: each key it shows (commented out or
/// not), by section ("" for the top level).
fn shown() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let from = readme.find("\n## Configuration").expect("a Configuration section");
    let block = readme[from..].split("```toml\n").nth(1).expect("a toml block").split("```").next().unwrap();
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in block.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_start_matches('[').split(']').next().unwrap().to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            {
                keys.push((section.clone(), key.to_owned()));
            }
        }
    }
    keys
}

#[test]
fn the_readme_shows_every_configuration_key_and_no_other() {
    let dir = TempDir::new();
    let shown = shown();
    let sections = ["", "limits", "auth", "metrics_service", "metrics_service.keypairs"];
    for section in sections {
        let header = match section {
            "" => String::new(),
            "metrics_service.keypairs" => "[[metrics_service.keypairs]]".to_owned(),
            s => format!("[{s}]"),
        };
        let want: BTreeSet<String> = accepted(&dir, &header)
            .into_iter()
            .filter(|k| !UNSHOWN.contains(&k.as_str()))
            .filter(|k| !section.is_empty() || !sections.contains(&k.as_str()))
            .filter(|k| section != "metrics_service" || k != "keypairs")
            .collect();
        let got: BTreeSet<String> =
            shown.iter().filter(|(s, _)| s == section).map(|(_, k)| k.clone()).collect();
        assert_eq!(
            got, want,
            "README.md, Configuration, section {section:?}: shown (left), accepted (right)"
        );
    }
}
