package unified

import (
	"fmt"
	"sync"
)

// registered is one named configuration.
type registered struct {
	cfg  *Config
	dsn  string // cfg.FormatDSN(), to compare re-registrations
	opts []Option
}

var registry struct {
	mu     sync.RWMutex // protects following fields
	byName map[string]registered
}

// Register stores cfg and opts under name, so that sql.Open("unified",
// name) opens a DB with them. This is how options a DSN cannot hold
// (node connectors, providers, a logger) reach sql.Open; package
// [unifiedtest] uses it.
//
// Registering the same name again with an equal configuration (same
// FormatDSN) is a no-op and keeps the first options; with a different one it
// fails with [ErrAlreadyRegistered]. The configuration is validated and
// copied: later changes to cfg have no effect. A registered name takes
// precedence over parsing it as a DSN.
func Register(name string, cfg *Config, opts ...Option) error {
	if name == "" {
		return fmt.Errorf("unified: Register: empty name")
	}
	if cfg == nil {
		return fmt.Errorf("unified: Register %q: nil config", name)
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	if _, err := buildOptions(opts); err != nil {
		return err
	}
	r := registered{cfg: cfg.Copy(), dsn: cfg.FormatDSN(), opts: append([]Option(nil), opts...)}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if prev, ok := registry.byName[name]; ok {
		if prev.dsn == r.dsn {
			return nil
		}
		return fmt.Errorf("%w: %q", ErrAlreadyRegistered, name)
	}
	if registry.byName == nil {
		registry.byName = make(map[string]registered)
	}
	registry.byName[name] = r
	return nil
}

// Unregister removes a name stored by Register. DBs already opened with it
// keep working. Unregistering an unknown name is a no-op.
func Unregister(name string) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.byName, name)
}

func lookupRegistered(name string) (registered, bool) {
	registry.mu.RLock()
	defer registry.mu.RUnlock()
	r, ok := registry.byName[name]
	return r, ok
}
