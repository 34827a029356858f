//! The WASI preview1 calls (`wasi_snapshot_preview1`, WebAssembly/WASI `legacy/preview1`
//! witx) that Rust's `wasm32-wasip1` std imports in a Proxy-Wasm filter. A filter has no
//! files, arguments or environment: those calls answer "none"; stdout/stderr become log
//! lines, as both gateways do with a filter's prints.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{format_err, Result};
use wasmtime::{Caller, Linker};

use crate::abi::{read_bytes, write_bytes, write_u32, write_u64};
use crate::worker::WorkerState;
use crate::LogLevel;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_SPIPE: i32 = 70;

const CLOCK_REALTIME: i32 = 0;
const FILETYPE_CHARACTER_DEVICE: u8 = 2;

type Ctx<'a> = Caller<'a, WorkerState>;

const MODULE: &str = "wasi_snapshot_preview1";

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Lines written to fd 1 or 2 go to the log, one line per log entry.
fn capture_output(caller: &mut Ctx<'_>, fd: i32, bytes: &[u8]) {
    let state = caller.data_mut();
    state.stdout.extend_from_slice(bytes);
    while let Some(end) = state.stdout.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = state.stdout.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        let level = if fd == 2 {
            LogLevel::Error
        } else {
            LogLevel::Info
        };
        state.log(level, format!("fd {fd}: {text}"));
    }
}

pub(crate) fn add_wasi_functions(linker: &mut Linker<WorkerState>) -> Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: Ctx<'_>, fd: i32, iovs: i32, iovs_len: i32, written_out: i32| -> Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            let table = read_bytes(&mut c, iovs, iovs_len.saturating_mul(8))?;
            let mut total = 0u32;
            for iov in table.chunks_exact(8) {
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let bytes = read_bytes(&mut c, ptr, len)?;
                capture_output(&mut c, fd, &bytes);
                total = total.saturating_add(len as u32);
            }
            write_u32(&mut c, written_out, total)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(
            MODULE,
            name,
            |mut c: Ctx<'_>, count_out: i32, size_out: i32| -> Result<i32> {
                write_u32(&mut c, count_out, 0)?;
                write_u32(&mut c, size_out, 0)?;
                Ok(ERRNO_SUCCESS)
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(
            MODULE,
            name,
            |_c: Ctx<'_>, _list: i32, _buffer: i32| -> Result<i32> { Ok(ERRNO_SUCCESS) },
        )?;
    }
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_c: Ctx<'_>, code: i32| -> Result<()> {
            Err(format_err!("the module called proc_exit({code})"))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: Ctx<'_>, buffer: i32, len: i32| -> Result<i32> {
            let mut seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                | 1;
            let bytes: Vec<u8> = (0..len as u32)
                .map(|_| {
                    // xorshift64: randomness for hash seeds, not for secrets.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            write_bytes(&mut c, buffer, &bytes)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: Ctx<'_>, clock: i32, _precision: i64, out: i32| -> Result<i32> {
            let nanos = if clock == CLOCK_REALTIME {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            } else {
                process_start().elapsed().as_nanos()
            };
            write_u64(&mut c, out, nanos as u64)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut c: Ctx<'_>, _clock: i32, out: i32| -> Result<i32> {
            write_u64(&mut c, out, 1_000)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |mut c: Ctx<'_>, fd: i32, out: i32| -> Result<i32> {
            if !(0..=2).contains(&fd) {
                return Ok(ERRNO_BADF);
            }
            let mut stat = [0u8; 24];
            stat[0] = FILETYPE_CHARACTER_DEVICE;
            write_bytes(&mut c, out, &stat)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(MODULE, "fd_close", |_c: Ctx<'_>, _fd: i32| -> Result<i32> {
        Ok(ERRNO_BADF)
    })?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_c: Ctx<'_>, fd: i32, _offset: i64, _whence: i32, _out: i32| -> Result<i32> {
            Ok(if (0..=2).contains(&fd) {
                ERRNO_SPIPE
            } else {
                ERRNO_BADF
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_c: Ctx<'_>, _fd: i32, _out: i32| -> Result<i32> { Ok(ERRNO_BADF) },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_c: Ctx<'_>, _fd: i32, _path: i32, _len: i32| -> Result<i32> { Ok(ERRNO_BADF) },
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_c: Ctx<'_>| -> Result<i32> {
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |_c: Ctx<'_>, _in: i32, _out: i32, _n: i32, _events_out: i32| -> Result<i32> {
            // A filter must never block its worker.
            Ok(ERRNO_NOSYS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |_c: Ctx<'_>, _fd: i32, _iovs: i32, _len: i32, _out: i32| -> Result<i32> { Ok(ERRNO_BADF) },
    )?;
    Ok(())
}
