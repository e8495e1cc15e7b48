//! The `--config` TOML file, the size parser (`ByteSize`) and the duration parser.
//!
//! Checks: no panic, whatever the text; a file error names the file; a file whose settings
//! each pass their own check (so `file_args` accepts it) is accepted by the command-line
//! parser too, so every refusal that start-up can give is either the file's (naming the
//! key) or a relation between settings (`resolve`, naming the flags); sizes and durations
//! that parse print back to the same value.
//!
//! Byte 0 picks the mode: the file, or one line for the size and duration parsers.
#![no_main]

use crier::config::ByteSize;
use crier::config::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if mode & 1 == 0 {
        match fuzzing::file_args(text) {
            Err(e) => assert!(e.starts_with("config file fuzz.toml"), "error does not name the file: {e}"),
            Ok(args) => {
                if let Err(e) = fuzzing::serve(args.clone()) {
                    panic!("file_args accepted {args:?}, the command line refused it: {e}");
                }
            }
        }
        return;
    }
    if let Ok(ByteSize(n)) = text.parse::<ByteSize>() {
        assert_eq!(n.to_string().parse::<ByteSize>(), Ok(ByteSize(n)), "{text:?}");
        if n % (1 << 20) == 0 {
            assert_eq!(format!("{}MiB", n >> 20).parse::<ByteSize>(), Ok(ByteSize(n)));
        }
    }
    if let Ok(d) = fuzzing::duration(text) {
        let shown = humantime::format_duration(d).to_string();
        assert_eq!(fuzzing::duration(&shown), Ok(d), "{text:?} printed as {shown:?}");
    }
});
