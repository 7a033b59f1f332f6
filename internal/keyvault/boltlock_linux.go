package keyvault

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// lockHolder names the process holding the flock on path, from
// /proc/locks, as " (pid N, cmd)"; "" if it cannot tell.
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
		return fmt.Sprintf(" (pid %s, %s)", pid, strings.TrimSpace(string(cmd)))
	}
	return ""
}
