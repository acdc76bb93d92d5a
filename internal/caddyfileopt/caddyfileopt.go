// Package caddyfileopt reads the Caddyfile arguments that the module's
// directives share in shape: durations, counts and sizes, some with "off".
// Each function reads the arguments of the option the dispenser is at, and
// refuses zero where zero would silently mean a default.
package caddyfileopt

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// Duration reads the one duration argument of the current option; with
// positive, a duration of zero or less is refused.
func Duration(d *caddyfile.Dispenser, dst *caddy.Duration, positive bool) error {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %q is not a duration: %v", option, s, err)
	}
	if positive && dur <= 0 {
		return d.Errf("%s must be a positive duration, got %q", option, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// DurationOrOff reads the one argument of the current option: a positive
// duration, or "off" for -1.
func DurationOrOff(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	if d.CountRemainingArgs() == 1 && d.NextArg() {
		if d.Val() == "off" {
			*dst = -1
			return nil
		}
		d.Prev() // back to the option's name, for Duration
	}
	return Duration(d, dst, true)
}

// CountOrOff reads a positive whole number, or "off" as -1.
func CountOrOff(d *caddyfile.Dispenser, dst *int) error {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	if s == "off" {
		*dst = -1
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return d.Errf("%s must be a positive whole number or off, got %q", option, s)
	}
	*dst = n
	return nil
}

// Size reads a size such as 64MiB, 1MB or 1048576 (bytes); the word
// keyword, when not empty, stands for the value keywordValue.
func Size(d *caddyfile.Dispenser, dst *int64, keyword string, keywordValue int64) error {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	if keyword != "" && s == keyword {
		*dst = keywordValue
		return nil
	}
	size, err := humanize.ParseBytes(s)
	if err != nil || size > 1<<62 {
		return d.Errf("%s: %q is not a size (like 64MiB or 1048576)", option, strings.TrimSpace(s))
	}
	if size == 0 {
		// Zero would silently mean the default.
		if keyword != "" {
			return d.Errf("%s: must be a positive size, or %s", option, keyword)
		}
		return d.Errf("%s: must be a positive size", option)
	}
	*dst = int64(size)
	return nil
}
