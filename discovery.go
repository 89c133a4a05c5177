package unified

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/unifiedsql/unified/internal/patronirest"
	"github.com/unifiedsql/unified/internal/topology"
)

// This file is the monitor's member list: which addresses are nodes. Its
// sources are the DSN's hosts and, with unified_patroni, the members of
// Patroni's GET /cluster; every address a host name resolves to is a node
// of its own. Names are resolved again every unified_dns_refresh (with
// jitter) and soon after a node of theirs fails a probe; Patroni is asked
// every patroniPoll. A new address becomes a node that is probed before it
// gets traffic (it is "down, not probed yet" until then); a vanished one is
// drained: no new statements, its idle connections closed after two health
// intervals, in-flight ones left to finish, and removed once it has none.
// Everything here runs on the monitor's goroutine but the lookups and the
// HTTP requests, which report back on channels.

// patroniPoll is how often Patroni's member list is read.
const patroniPoll = 5 * time.Second

// errDrained is the observation of a node whose address left its source.
var errDrained = errors.New("drained: its address is no longer in DNS or Patroni's member list")

// source is one host a node list comes from: a DSN host, or a Patroni
// member.
type source struct {
	seed   *seed
	origin string // "dsn" or "patroni"
	// resolve: the host is a name to resolve; addrs its last resolution
	// (nil before the first, or when it never resolved: one node dialed by
	// name).
	resolve bool
	addrs   []string
	next    time.Time // when to resolve again
	busy    bool      // a lookup is in flight
	// pending: a new Patroni member whose first lookup is in flight: no
	// node until it is done (then its addresses', or one dialed by name).
	pending  bool
	patroni  string // the Patroni member's name
	noLoadBl bool   // Patroni's noloadbalance tag
}

// memberKey identifies a node across sources: its address and port, or the
// DSN's host:port for a name dialed by name or a socket.
func memberKey(sd *seed, addr string) string {
	if addr == "" {
		if sd.resolvable() {
			return sd.Name
		}
		addr = sd.ConnConfig.Host
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(sd.ConnConfig.Port)))
}

type resolved struct {
	src   *source
	addrs []string
	err   error
}

type patroniAnswer struct {
	c   patronirest.Cluster
	err error
}

// discovery is the monitor's state of its sources; owned by its goroutine.
type discovery struct {
	sources     []*source
	resolved    chan resolved
	patroni     chan patroniAnswer
	patroniBusy bool
	patroniNext time.Time
	switchover  *patronirest.Switchover
	warnedHTTP  bool
	httpClient  *http.Client
}

func (m *monitor) initDiscovery() {
	d := &m.disc
	d.resolved = make(chan resolved)
	d.patroni = make(chan patroniAnswer)
	d.httpClient = &http.Client{Timeout: 2 * m.c.cfg.HealthTimeout}
	for _, sd := range m.c.seeds {
		d.sources = append(d.sources, &source{seed: sd, origin: "dsn", resolve: sd.resolvable()})
	}
	// The first resolution of every name, before the first probes: the
	// election needs every node.
	for _, src := range d.sources {
		if src.resolve {
			src.addrs, _ = m.lookupOnce(m.ctx, src)
			src.next = m.refreshAfter(time.Now())
		}
	}
	if len(m.c.cfg.Patroni) > 0 {
		if c, err := m.fetchPatroni(m.ctx); err == nil {
			m.applyPatroni(c, true)
		}
		d.patroniNext = time.Now().Add(patroniPoll)
	}
	m.reconcile(time.Now())
}

// lookupOnce resolves src's host, bounded by twice the health timeout.
func (m *monitor) lookupOnce(ctx context.Context, src *source) ([]string, error) {
	lctx, cancel := context.WithTimeout(ctx, 2*m.c.cfg.HealthTimeout)
	defer cancel()
	addrs, err := m.c.lookup()(lctx, src.seed.ConnConfig.Host)
	if err == nil && len(addrs) == 0 {
		err = &net.DNSError{Err: "no addresses", Name: src.seed.ConnConfig.Host, IsNotFound: true}
	}
	if err != nil && m.ctx.Err() != nil {
		return src.addrs, err // Close canceled it: no discovery error
	}
	if err != nil {
		m.c.log.Warn("unified: host name did not resolve; keeping its last addresses", "host", src.seed.Name, "error", err)
		m.c.tel.discoveryError()
		return src.addrs, err
	}
	return addrs, nil
}

// refreshAfter is when a name resolved at now is resolved again: the
// refresh interval with 10 % jitter, never (zero) with unified_dns_refresh=0.
func (m *monitor) refreshAfter(now time.Time) time.Time {
	r := m.c.cfg.DNSRefresh
	if r <= 0 {
		return time.Time{}
	}
	return now.Add(time.Duration(float64(r) * (0.9 + 0.2*rand.Float64())))
}

// discover launches what is due: lookups of names whose refresh time came,
// a request to Patroni. Results come back on d.resolved and d.patroni.
func (m *monitor) discover(now time.Time) {
	d := &m.disc
	for _, src := range d.sources {
		if !src.resolve || src.busy || src.next.IsZero() || now.Before(src.next) {
			continue
		}
		m.lookupAsync(src)
	}
	if len(m.c.cfg.Patroni) > 0 && !d.patroniBusy && !now.Before(d.patroniNext) {
		d.patroniBusy = true
		m.wg.Go(func() {
			c, err := m.fetchPatroni(m.ctx)
			select {
			case d.patroni <- patroniAnswer{c: c, err: err}:
			case <-m.ctx.Done():
			}
		})
	}
}

// lookupAsync resolves src's host off the monitor's goroutine; the result
// comes back on d.resolved.
func (m *monitor) lookupAsync(src *source) {
	src.busy = true
	m.wg.Go(func() { // stop waits for it: Close ends every goroutine
		addrs, err := m.lookupOnce(m.ctx, src)
		select {
		case m.disc.resolved <- resolved{src: src, addrs: addrs, err: err}:
		case <-m.ctx.Done():
		}
	})
}

// refreshSoon asks for n's name to be resolved again within a second (its
// probe failed: its address may have changed).
func (m *monitor) refreshSoon(n *node, now time.Time) {
	for _, src := range m.disc.sources {
		if src.resolve && src.seed == n.seed && m.c.cfg.DNSRefresh > 0 {
			if soon := now.Add(time.Second); src.next.After(soon) {
				src.next = soon
			}
		}
	}
}

// fetchPatroni reads GET /cluster from the first of unified_patroni's URLs
// that answers.
func (m *monitor) fetchPatroni(ctx context.Context) (patronirest.Cluster, error) {
	var errs []error
	for _, base := range m.c.cfg.Patroni {
		if strings.HasPrefix(base, "http://") && !m.disc.warnedHTTP {
			m.disc.warnedHTTP = true
			m.c.log.Warn("unified: unified_patroni over plain http: a forged member list cannot make a foreign server primary without passing the DSN's TLS checks, but it can hide members; prefer https", "url", base)
		}
		c, err := patronirest.Fetch(ctx, m.disc.httpClient, base)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if m.ctx.Err() != nil {
		return patronirest.Cluster{}, err // Close canceled it: no discovery error
	}
	m.c.log.Warn("unified: Patroni's member list could not be read; keeping the last one", "error", err)
	m.c.tel.discoveryError()
	return patronirest.Cluster{}, err
}

// applyPatroni makes Patroni's members the Patroni sources: new members
// become sources with the DSN's credentials and TLS settings, members that
// left are dropped (their nodes drain unless the DSN lists them too). A new
// member's name is resolved at once atStart (before the first election,
// which needs every node), otherwise off the monitor's goroutine: a slow
// resolver must not stop the probes and publications meanwhile.
func (m *monitor) applyPatroni(c patronirest.Cluster, atStart bool) {
	d := &m.disc
	byKey := map[string]*source{}
	var kept []*source
	for _, src := range d.sources {
		if src.origin == "patroni" {
			byKey[src.seed.Name] = src
		} else {
			kept = append(kept, src)
		}
	}
	for _, pm := range c.Members {
		if pm.Host == "" {
			continue
		}
		port := pm.Port
		if port == 0 {
			port = 5432
		}
		name := net.JoinHostPort(pm.Host, strconv.Itoa(port))
		src := byKey[name]
		if src == nil {
			sd := m.c.memberSeed(name, pm.Host, uint16(port))
			src = &source{seed: sd, origin: "patroni", resolve: sd.resolvable()}
			switch {
			case src.resolve && atStart:
				src.addrs, _ = m.lookupOnce(m.ctx, src)
				src.next = m.refreshAfter(time.Now())
			case src.resolve:
				src.pending = true
				m.lookupAsync(src)
			}
		}
		src.patroni, src.noLoadBl = pm.Name, pm.NoLoadBalance
		kept = append(kept, src)
	}
	d.sources = kept
	d.switchover = c.Switchover
}

// reconcile makes the member list what the sources say: new addresses
// join (not probed yet), vanished ones drain, drained ones with nothing
// open leave.
func (m *monitor) reconcile(now time.Time) {
	type want struct {
		sd       *seed
		addr     string
		origin   string
		noLoadBl bool
	}
	var order []string
	wanted := map[string]want{}
	for _, src := range m.disc.sources {
		if src.pending {
			continue
		}
		addrs := src.addrs
		if len(addrs) == 0 {
			addrs = []string{""}
		}
		for _, a := range addrs {
			k := memberKey(src.seed, a)
			if w, dup := wanted[k]; dup {
				// One node from two sources (the DSN names a Patroni
				// member): the first gives its seed, but Patroni's
				// noloadbalance tag holds whichever came first.
				w.noLoadBl = w.noLoadBl || src.noLoadBl
				wanted[k] = w
				continue
			}
			origin := src.origin
			if origin == "dsn" && a != "" {
				origin = "dns"
			}
			wanted[k] = want{sd: src.seed, addr: a, origin: origin, noLoadBl: src.noLoadBl}
			order = append(order, k)
		}
	}
	have := map[string]*member{}
	var kept []*member
	for _, mb := range m.members {
		w, ok := wanted[mb.key]
		switch {
		case ok:
			if mb.draining {
				m.c.log.Info("unified: node back in its source", "node", mb.n.name)
			}
			mb.draining = false
			mb.n.noLoadBalance.Store(w.noLoadBl)
		case !mb.draining:
			mb.draining, mb.drainSince = true, now
			m.c.log.Info("unified: node draining: its address left its source", "node", mb.n.name)
		}
		if mb.draining && mb.n.idle() && now.Sub(mb.drainSince) > 2*m.c.cfg.HealthInterval {
			if mb.conn != nil && !mb.inflight {
				_ = mb.conn.Close()
				mb.conn = nil
			}
			if !mb.inflight {
				m.c.log.Info("unified: node removed", "node", mb.n.name)
				continue
			}
		}
		have[mb.key] = mb
		kept = append(kept, mb)
	}
	for _, k := range order {
		if have[k] != nil {
			continue
		}
		w := wanted[k]
		if w.addr != "" && !w.sd.resolvable() {
			w.addr = "" // an address given as such is dialed as given
		}
		n := m.c.newNode(w.sd, w.addr)
		n.source = w.origin
		n.noLoadBalance.Store(w.noLoadBl)
		mb := &member{n: n, key: k, obs: topology.Observation{Err: errNotProbed}}
		kept = append(kept, mb)
		if m.c.viewNow() != nil {
			m.c.log.Info("unified: node added", "node", n.name, "source", n.source)
		}
	}
	m.members = kept
}

// retireIdle closes the idle connections of nodes draining for more than
// two health intervals (no statement can start on them since they left the
// view; in-flight ones are left to finish).
func (m *monitor) retireIdle(now time.Time) {
	for _, mb := range m.members {
		if mb.draining && now.Sub(mb.drainSince) > 2*m.c.cfg.HealthInterval {
			mb.n.closeIdle()
		}
	}
}

// leaving returns the node a scheduled switchover is about to take the
// primary role from, nil when none: writes then wait for the new primary
// instead of going to the old one, from two health intervals before the
// switchover's time until ten seconds after it.
func (m *monitor) leaving(now time.Time) *node {
	so := m.disc.switchover
	if so == nil || so.From == "" || now.Before(so.At.Add(-2*m.c.cfg.HealthInterval)) || now.After(so.At.Add(10*time.Second)) {
		return nil
	}
	for _, src := range m.disc.sources {
		if src.patroni != so.From {
			continue
		}
		keys := map[string]bool{memberKey(src.seed, ""): true}
		for _, a := range src.addrs {
			keys[memberKey(src.seed, a)] = true
		}
		for _, mb := range m.members {
			if keys[mb.key] {
				return mb.n
			}
		}
	}
	return nil
}

// memberSeed is the seed of a Patroni member: the DSN's first host's
// configuration (credentials, TLS, database, parameters) at the member's
// host and port. With sslmode=verify-full the certificate must match the
// member's host name: a forged member list cannot make a foreign server
// a node without a certificate the DSN's CA signed for its name.
func (c *Connector) memberSeed(name, host string, port uint16) *seed {
	base := c.seeds[0].ConnConfig
	cc := base.Copy()
	cc.Host, cc.Port = host, port
	if cc.TLSConfig != nil && cc.TLSConfig.ServerName != "" {
		cc.TLSConfig = cc.TLSConfig.Clone()
		cc.TLSConfig.ServerName = host
	}
	for _, f := range cc.Fallbacks {
		f.Host, f.Port = host, port
		if f.TLSConfig != nil && f.TLSConfig.ServerName != "" {
			f.TLSConfig = f.TLSConfig.Clone()
			f.TLSConfig.ServerName = host
		}
	}
	return &seed{NodeConfig: NodeConfig{Name: name, ConnConfig: cc}}
}

var _ pgconn.LookupFunc = net.DefaultResolver.LookupHost
