//! Load averages, through sysinfo (the live kernel's `/proc/loadavg`).

use sysinfo::System;

use super::collector::{Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct LoadAvg;

impl Collector for LoadAvg {
    fn name(&self) -> &'static str {
        "loadavg"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let l = System::load_average().map_err(|e| Error::Failed(format!("load average: {e}")))?;
        for (name, v) in [
            ("jetkvm_system_load1", l.one),
            ("jetkvm_system_load5", l.five),
            ("jetkvm_system_load15", l.fifteen),
        ] {
            out.single(name, "Load average over the named number of minutes.", Kind::Gauge, v);
        }
        Ok(())
    }
}
