package keyvault

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockHolder names the process holding the flock on path, from
// /proc/locks, as " (pid N, cmd, since T)", T being when that process
// started (it takes the lock as it opens the store); "" if it cannot tell.
func lockHolder(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return ""
	}
	defer f.Close()
	// "1: FLOCK  ADVISORY  WRITE 27413 fe:00:9987909 0 EOF": the pid, then
	// the device (major:minor in hex) and inode of the locked file.
	dev := uint64(st.Dev)
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	file := fmt.Sprintf("%02x:%02x:%d", major, minor, st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != file {
			continue
		}
		pid := fields[4]
		cmd, _ := os.ReadFile("/proc/" + pid + "/comm")
		holder := "pid " + pid + ", " + strings.TrimSpace(string(cmd))
		if start, ok := processStart(pid); ok {
			holder += ", since " + start.UTC().Format(time.RFC3339)
		}
		return " (" + holder + ")"
	}
	return ""
}

// processStart returns when process pid started: field 22 of
// /proc/pid/stat, in clock ticks since boot (USER_HZ, 100 on Linux), plus
// the boot time from /proc/stat.
func processStart(pid string) (time.Time, bool) {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return time.Time{}, false
	}
	// The command, field 2, is in parentheses and may hold spaces: count
	// from the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 20 {
		return time.Time{}, false
	}
	ticks, err := strconv.ParseInt(fields[19], 10, 64) // field 22: fields[0] is field 3
	if err != nil {
		return time.Time{}, false
	}
	procStat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for line := range strings.Lines(string(procStat)) {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			const userHZ = 100
			return time.Unix(boot, 0).Add(time.Duration(ticks) * time.Second / userHZ), true
		}
	}
	return time.Time{}, false
}
