package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Transfer are the options of the node-to-node transfer: restores and
// clones onto a node other than their source's.
type Transfer struct {
	// Address is where this node serves its snapshots and volumes to
	// other nodes ("": it serves none).
	Address string
	// Broker is the cluster controller's URL that issues certificates and
	// capabilities ("": no transfers at all).
	Broker string
	// BrokerName is the name the broker's certificate must carry (default:
	// the URL's host).
	BrokerName string
	// TokenFile is the projected ServiceAccount token shown to the broker.
	TokenFile string
	// TrustDir holds the trusted CA certificates (a mounted ConfigMap).
	TrustDir string
	// MaxConcurrent bounds transfers per direction, Bandwidth their
	// bytes per second per direction (0: unbounded).
	MaxConcurrent int
	Bandwidth     int64
	// AbandonAfter is how long an incoming volume may make no progress
	// before it is deleted.
	AbandonAfter time.Duration
}

// Enabled tells whether this node fetches from and serves to others.
func (t *Transfer) Enabled() bool { return t.Broker != "" }

// BrokerServerName is the name the broker's certificate must carry.
func (t *Transfer) BrokerServerName() string {
	if t.BrokerName != "" {
		return t.BrokerName
	}
	u, err := url.Parse(t.Broker)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

func (t *Transfer) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&t.Address, "transfer-address", "", "address of this node's transfer server, from which other nodes copy its snapshots and volumes (mutual TLS; empty: none)")
	fs.StringVar(&t.Broker, "transfer-broker", "", "HTTPS URL of the flashpv controller's transfer broker (empty: restores and clones only on their source's node)")
	fs.StringVar(&t.BrokerName, "transfer-broker-name", "", "DNS name the broker's certificate must carry (default: the host of --transfer-broker), for a URL that names the broker's Service by its IP")
	fs.StringVar(&t.TokenFile, "transfer-token-file", "/var/run/secrets/flashpv.dev/token", "projected ServiceAccount token (audience flashpv.dev/transfer) shown to the broker")
	fs.StringVar(&t.TrustDir, "transfer-trust-dir", "/etc/flashpv-transfer", "directory of the trusted transfer CA certificates (*.pem; the controller's ConfigMap)")
	fs.IntVar(&t.MaxConcurrent, "transfer-max-concurrent", 2, "transfers this node sends, and receives, at once")
	fs.Func("transfer-bandwidth", "bytes per second this node sends, and receives, over transfers, like 200Mi (0: unbounded; default 256Mi)", func(s string) error {
		n, err := ParseSize(s)
		t.Bandwidth = n
		return err
	})
	fs.DurationVar(&t.AbandonAfter, "transfer-abandon-after", time.Hour, "an incoming volume whose transfer makes no progress this long is deleted")
	t.Bandwidth = 256 << 20
}

func (t *Transfer) validate() []error {
	if t.Address == "" && t.Broker == "" {
		return nil
	}
	var errs []error
	if t.Address != "" {
		if _, _, err := net.SplitHostPort(t.Address); err != nil {
			errs = append(errs, fmt.Errorf("--transfer-address %q: %v", t.Address, err))
		}
		if t.Broker == "" {
			errs = append(errs, errors.New("--transfer-address needs --transfer-broker (the broker issues the server's certificate)"))
		}
	}
	if t.Broker != "" {
		if strings.Contains(t.Broker+t.BrokerName, "$(") {
			errs = append(errs, fmt.Errorf("--transfer-broker %q: a variable was not expanded (the flashpv-controller Service did not exist when this pod started; it is restarted until it does)", t.Broker))
		} else if u, err := url.Parse(t.Broker); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("--transfer-broker %q: want an https:// URL", t.Broker))
		}
		if !filepath.IsAbs(t.TokenFile) || !filepath.IsAbs(t.TrustDir) {
			errs = append(errs, errors.New("--transfer-token-file and --transfer-trust-dir must be absolute"))
		}
	}
	if t.MaxConcurrent < 1 {
		errs = append(errs, errors.New("--transfer-max-concurrent must be at least 1"))
	}
	if t.Bandwidth < 0 {
		errs = append(errs, errors.New("--transfer-bandwidth must not be negative"))
	}
	if t.AbandonAfter < 5*time.Minute {
		errs = append(errs, fmt.Errorf("--transfer-abandon-after %s: at least 5m", t.AbandonAfter))
	}
	return errs
}
