//! The items a submission runs its program on, and the program of each: `{}` replaced by the
//! item, the item in `$BLITZEN_ITEM` (and its number in `$BLITZEN_ITEM_NUMBER`).

use std::io::BufRead;
use std::path::Path;

use blitzen::CommandSpec;

/// The items, each with the number `output ITEM` knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items {
    pub values: Vec<String>,
    pub numbers: Vec<u64>,
}

impl Items {
    /// `A-B`: the numbers from A to B, each its own number.
    pub fn array(range: &str) -> Result<Self, String> {
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| format!("--array {range}: write A-B, e.g. 1-1000"))?;
        let number = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| format!("--array {range}: `{s}` is not a number"))
        };
        let (a, b) = (number(a)?, number(b)?);
        if a > b {
            return Err(format!("--array {range}: it starts after it ends"));
        }
        let numbers: Vec<u64> = (a..=b).collect();
        Ok(Self { values: numbers.iter().map(u64::to_string).collect(), numbers })
    }

    /// Items in order, numbered from 1.
    pub fn listed(values: Vec<String>) -> Self {
        let numbers = (1..=values.len() as u64).collect();
        Self { values, numbers }
    }

    /// The lines of `file` (`-`: standard input), empty ones left out.
    pub fn lines(file: &Path) -> Result<Self, String> {
        let read = |reader: &mut dyn BufRead| -> Result<Vec<String>, String> {
            let mut lines = Vec::new();
            for line in reader.lines() {
                let line = line.map_err(|e| format!("--each-line {}: {e}", file.display()))?;
                if !line.trim().is_empty() {
                    lines.push(line);
                }
            }
            Ok(lines)
        };
        let lines = if file == Path::new("-") {
            read(&mut std::io::stdin().lock())?
        } else {
            let opened = std::fs::File::open(file)
                .map_err(|e| format!("--each-line {}: {e}", file.display()))?;
            read(&mut std::io::BufReader::new(opened))?
        };
        if lines.is_empty() {
            return Err(format!("--each-line {}: no lines, so nothing to run", file.display()));
        }
        Ok(Self::listed(lines))
    }

    /// The files `pattern` matches, sorted.
    pub fn files(pattern: &str) -> Result<Self, String> {
        let paths = glob::glob(pattern).map_err(|e| format!("--each-file {pattern}: {e}"))?;
        let mut files = Vec::new();
        for path in paths {
            let path = path.map_err(|e| format!("--each-file {pattern}: {e}"))?;
            if path.is_file() {
                files.push(path.to_string_lossy().into_owned());
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(format!("--each-file {pattern}: no file matches it, so nothing to run"));
        }
        Ok(Self::listed(files))
    }
}

/// Splits `program [args]... [::: items...]`, as GNU parallel users write it.
pub fn split_items(words: &[String]) -> (Vec<String>, Option<Vec<String>>) {
    match words.iter().position(|w| w == ":::") {
        Some(at) => (words[..at].to_vec(), Some(words[at + 1..].to_vec())),
        None => (words.to_vec(), None),
    }
}

/// Checks that the program says where the item goes: `{}` in an argument, or `BLITZEN_ITEM`
/// (a shell reading `$BLITZEN_ITEM`).
pub fn check_program(program: &[String]) -> Result<(), String> {
    let Some(first) = program.first() else {
        return Err(
            "no program to run: give it after --, e.g. blitzen submit --array 1-3 -- echo {}"
                .into(),
        );
    };
    if first == "{}" {
        return Err("the program itself cannot be {}: name a program, e.g. sh -c '{}'".into());
    }
    if !program.iter().any(|w| w.contains("{}") || w.contains("BLITZEN_ITEM")) {
        return Err(format!(
            "`{}` does not say where the item goes: put {{}} among its arguments (or read \
             $BLITZEN_ITEM in a shell)",
            program.join(" ")
        ));
    }
    Ok(())
}

/// The program of one item.
pub fn spec_for(
    program: &[String],
    value: &str,
    number: u64,
    env: &[(String, String)],
    cwd: Option<&str>,
) -> CommandSpec {
    let args = program[1..].iter().map(|a| a.replace("{}", value));
    let mut spec = CommandSpec::new(program[0].clone()).args(args);
    for (key, val) in env {
        spec = spec.env(key.clone(), val.clone());
    }
    spec = spec.env("BLITZEN_ITEM", value).env("BLITZEN_ITEM_NUMBER", number.to_string());
    if let Some(dir) = cwd {
        spec = spec.cwd(dir);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_lists_and_the_program_of_an_item() {
        let items = Items::array("3-5").expect("an array");
        assert_eq!(
            (items.values.clone(), items.numbers.clone()),
            (vec!["3".into(), "4".into(), "5".into()], vec![3, 4, 5])
        );
        assert!(Items::array("5-1").expect_err("backwards").contains("starts after it ends"));
        assert!(Items::array("5").is_err() && Items::array("a-3").is_err());
        let words: Vec<String> = ["gzip", "-k", "{}", ":::", "a", "b"].map(String::from).into();
        let (program, listed) = split_items(&words);
        assert_eq!(program, ["gzip", "-k", "{}"]);
        assert_eq!(listed, Some(vec!["a".to_string(), "b".to_string()]));
        let spec = spec_for(&program, "a.txt", 1, &[("K".into(), "V".into())], Some("/tmp"));
        assert_eq!(spec.program, "gzip");
        assert_eq!(spec.args, ["-k", "a.txt"]);
        assert!(spec.env.contains(&("BLITZEN_ITEM".into(), "a.txt".into())));
        assert_eq!(spec.cwd.as_deref(), Some("/tmp"));
        assert!(check_program(&program).is_ok());
        assert!(check_program(&["echo".into(), "hi".into()]).expect_err("no {}").contains("{}"));
        assert!(check_program(&["sh".into(), "-c".into(), "echo $BLITZEN_ITEM".into()]).is_ok());
        assert!(check_program(&[]).is_err());
    }
}
