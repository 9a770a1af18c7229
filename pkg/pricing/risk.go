package pricing

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// Bucket is an interruption-frequency range in the style of the AWS Spot
// Instance Advisor: the share of a pool's instances reclaimed in a month.
type Bucket int

const (
	BucketUnknown Bucket = iota
	BucketUnder5
	Bucket5To10
	Bucket10To15
	Bucket15To20
	BucketOver20
)

var bucketNames = []string{"", "<5%", "5-10%", "10-15%", "15-20%", ">20%"}

// bucketMonthly is the monthly reclaim probability Penny assumes inside each
// bucket: the middle of the range, and 25% for the open top range.
var bucketMonthly = []float64{0, 0.025, 0.075, 0.125, 0.175, 0.25}

func (b Bucket) String() string {
	if b < 0 || int(b) >= len(bucketNames) {
		return fmt.Sprintf("Bucket(%d)", int(b))
	}
	return bucketNames[b]
}

// ParseBucket reads a Spot Advisor bucket as the advisor writes it.
func ParseBucket(s string) (Bucket, error) {
	norm := strings.ReplaceAll(strings.TrimSpace(s), " ", "")
	for i, n := range bucketNames {
		if i > 0 && norm == n {
			return Bucket(i), nil
		}
	}
	return BucketUnknown, fmt.Errorf("interruption bucket %q: want one of %s (the AWS Spot Instance Advisor's monthly ranges)", s, strings.Join(bucketNames[1:], ", "))
}

// MonthlyProbability is the chance that a node of the bucket is reclaimed
// within a month, as Penny assumes it.
func (b Bucket) MonthlyProbability() float64 {
	if b <= BucketUnknown || int(b) >= len(bucketMonthly) {
		return 0
	}
	return bucketMonthly[b]
}

// HoursPerMonth is the month the Spot Advisor's frequencies refer to.
const HoursPerMonth = 730.0

// RateFromMonthly turns a monthly reclaim probability into a rate per
// node-hour of a Poisson process with that probability.
func RateFromMonthly(p float64) float64 {
	if p <= 0 {
		return 0
	}
	if p >= 1 {
		p = 0.9999
	}
	return -math.Log(1-p) / HoursPerMonth
}

// MonthlyFromRate is the inverse of RateFromMonthly.
func MonthlyFromRate(rate float64) float64 {
	return ReclaimProbability(rate, HoursPerMonth*time.Hour)
}

// ReclaimProbability is the chance that a node reclaimed at rate (per hour)
// is reclaimed within d.
func ReclaimProbability(rate float64, d time.Duration) float64 {
	if rate <= 0 || d <= 0 {
		return 0
	}
	return 1 - math.Exp(-rate*d.Hours())
}

// GangReclaimProbability is the chance that at least one of a gang's nodes
// is reclaimed within its expected runtime, given each node's reclaim rate.
// Reclaims of different nodes are taken as independent, so the gang is
// interrupted at the sum of the rates: one lost member stops every member.
func GangReclaimProbability(rates []float64, runtime time.Duration) float64 {
	sum := 0.0
	for _, r := range rates {
		if r > 0 {
			sum += r
		}
	}
	return ReclaimProbability(sum, runtime)
}

// Pool is a set of nodes that are reclaimed alike: one instance type in one
// zone bought as one capacity type.
type Pool struct {
	InstanceType string
	Zone         string
	Capacity     CapacityType
}

// PoolOf is the pool a node belongs to, given its capacity type
// (NodeCapacity).
func PoolOf(node *corev1.Node, c Capacity) Pool {
	return Pool{
		InstanceType: NodeInstanceType(node),
		Zone:         node.Labels[corev1.LabelTopologyZone],
		Capacity:     c.Type,
	}
}

// NodeInstanceType is a node's instance type: its stable label, else the
// beta label older clusters and some node groups still carry alone. Prices
// and risk pools read it alike: a node priced by the beta label but pooled
// by the stable one would share one pool, with an empty instance type, with
// every other such node whatever its type.
func NodeInstanceType(node *corev1.Node) string {
	if it := node.Labels[corev1.LabelInstanceTypeStable]; it != "" {
		return it
	}
	return node.Labels[corev1.LabelInstanceType]
}

func (p Pool) String() string {
	return p.InstanceType + "/" + p.Zone + "/" + string(p.Capacity)
}

// ReclaimFeed is how observed reclaims reach the risk model: in
// penny-scheduler the reclaim coordinator (reclaims) and FeedExposure
// (node-hours); in replays, the simulator.
type ReclaimFeed interface {
	// ObserveExposure records that a pool ran nodeHours of nodes up to at.
	// Without exposure a reclaim count says nothing about a rate.
	ObserveExposure(pool Pool, nodeHours float64, at time.Time)
	// ObserveReclaim records that a node of the pool was reclaimed at at.
	ObserveReclaim(pool Pool, node string, at time.Time)
}

// RiskSource answers how often a pool's nodes are reclaimed.
type RiskSource interface {
	// ReclaimRate is the expected number of reclaims per node-hour.
	ReclaimRate(pool Pool) float64
}

// RiskConfig tunes the risk model.
type RiskConfig struct {
	// PriorNodeHours is how much evidence the prior is worth, in node-hours
	// of observation. Default 730 (one node-month): a month of observing one
	// node moves the estimate halfway from the prior to what was observed.
	PriorNodeHours float64
	// HalfLife is how fast old evidence is forgotten. Default 14 days:
	// Spot markets shift within weeks.
	HalfLife time.Duration
	// DefaultBucket is the prior of a Spot pool nobody gave a bucket for.
	// Default >20%: an unknown pool is assumed risky until observed.
	DefaultBucket Bucket
	// Clock is what "now" is when a rate is read: evidence is discounted to
	// it, so a pool that has no nodes left (scaled to zero, or reclaimed
	// whole) drifts back to its prior instead of keeping its last reclaims
	// at full weight. Default the wall clock; the simulator hands its own.
	Clock clock.PassiveClock
}

func (c *RiskConfig) defaults() {
	if c.PriorNodeHours <= 0 {
		c.PriorNodeHours = HoursPerMonth
	}
	if c.HalfLife <= 0 {
		c.HalfLife = 14 * 24 * time.Hour
	}
	if c.DefaultBucket == BucketUnknown {
		c.DefaultBucket = BucketOver20
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
}

// RiskModel estimates each pool's reclaim rate with a Gamma-Poisson model:
// reclaims arrive as a Poisson process whose rate has a Gamma prior set from
// the pool's Spot-Advisor bucket; observed reclaims and exposure update it.
// Evidence decays exponentially with the configured half-life, so the
// estimate follows a market that changes. On-demand and reserved pools are
// never reclaimed by the cloud and have rate 0.
type RiskModel struct {
	cfg RiskConfig

	mu     sync.Mutex
	priors map[Pool]Bucket
	// pinned is the pools whose prior SetPrior set: a catalog's bucket
	// (EnsurePrior) does not replace it.
	pinned map[Pool]bool
	pools  map[Pool]*evidence
	// changed is signalled, without blocking, at each reclaim: Persist
	// saves it soon. Exposure arrives every minute and waits for a resync.
	changed chan struct{}
	// onChange is what OnChange registered.
	onChange []func(Pool)
}

// evidence is the decayed sufficient statistic of the Gamma posterior:
// reclaims and node-hours observed, both discounted to at.
type evidence struct {
	reclaims  float64
	nodeHours float64
	at        time.Time
	total     int
	// counted holds the nodes whose reclaim is in the evidence, each until
	// when another report of it is the same reclaim (ReclaimMemory). It is
	// saved with the evidence: the coordinator records a notice as observed
	// only after the save, and a scheduler restarted between the two hears
	// the notice again.
	counted map[string]time.Time
}

// markCounted has node counted until until, or until its mark's end if
// that is later.
func (e *evidence) markCounted(node string, until time.Time) {
	if e.counted == nil {
		e.counted = map[string]time.Time{}
	}
	if until.After(e.counted[node]) {
		e.counted[node] = until
	}
}

// ReclaimMemory is how long after it is counted a node's reclaim is
// remembered, so that a report of it again is not counted again: a node is
// reclaimed once, and its notice is in force for minutes (two on AWS). A
// node recreated under the same name (a GKE Spot VM) and reclaimed again
// after that counts again.
const ReclaimMemory = time.Hour

var _ ReclaimFeed = &RiskModel{}
var _ RiskSource = &RiskModel{}

// NewRiskModel builds a model; zero fields of cfg take their defaults.
func NewRiskModel(cfg RiskConfig) *RiskModel {
	cfg.defaults()
	return &RiskModel{cfg: cfg, priors: map[Pool]Bucket{}, pinned: map[Pool]bool{}, pools: map[Pool]*evidence{}, changed: make(chan struct{}, 1)}
}

// SetPrior sets the bucket a pool's estimate starts from, for good: the
// catalog's bucket (EnsurePrior) does not replace it.
func (m *RiskModel) SetPrior(pool Pool, b Bucket) {
	m.mu.Lock()
	m.priors[pool] = b
	m.pinned[pool] = true
	m.publish(pool)
	m.mu.Unlock()
	m.notify(pool)
}

// prior is the bucket a pool's estimate starts from.
func (m *RiskModel) prior(pool Pool) Bucket {
	b, ok := m.priors[pool]
	if !ok || b == BucketUnknown {
		b = m.cfg.DefaultBucket
	}
	return b
}

// decayTo discounts the evidence to at before something dated at is added
// to it, and returns the weight that something has: 1, or less for
// something older than the evidence, told late, which counts as old.
// Evidence is never dated after now: a reclaim time comes from the node's
// agent, whose clock may run ahead, and evidence dated in the future would
// not decay until that time came (a year ahead, a pool's reclaims would
// weigh in full for a year) while everything reported meanwhile was added
// undiscounted.
func (m *RiskModel) decayTo(e *evidence, at time.Time) float64 {
	if now := m.cfg.Clock.Now(); at.After(now) {
		at = now
	}
	switch {
	case e.at.IsZero():
		e.at = at
	case at.After(e.at):
		e.reclaims, e.nodeHours = m.decayed(e, at)
		e.at = at
	case at.Before(e.at):
		return m.weight(e.at.Sub(at))
	}
	return 1
}

// weight is what evidence age old is worth.
func (m *RiskModel) weight(age time.Duration) float64 {
	return math.Exp(-math.Ln2 * age.Hours() / m.cfg.HalfLife.Hours())
}

// decayed is the evidence discounted to at, leaving it as it is: a rate
// must not depend on how often it was read (each read rounding the stored
// evidence once more moved a replay's bill by cents).
func (m *RiskModel) decayed(e *evidence, at time.Time) (reclaims, nodeHours float64) {
	if e.at.IsZero() || !at.After(e.at) {
		return e.reclaims, e.nodeHours
	}
	f := m.weight(at.Sub(e.at))
	return e.reclaims * f, e.nodeHours * f
}

func (m *RiskModel) ev(pool Pool) *evidence {
	e := m.pools[pool]
	if e == nil {
		e = &evidence{}
		m.pools[pool] = e
	}
	return e
}

// ObserveExposure implements ReclaimFeed.
func (m *RiskModel) ObserveExposure(pool Pool, nodeHours float64, at time.Time) {
	// NaN and +Inf would stay in the evidence for good: NaN switches off
	// every rule that compares the rate, +Inf makes the pool look safe.
	if pool.Capacity != Spot || !(nodeHours > 0) || math.IsInf(nodeHours, 1) {
		return
	}
	m.mu.Lock()
	e := m.ev(pool)
	e.nodeHours += nodeHours * m.decayTo(e, at)
	m.publish(pool)
	m.mu.Unlock()
	m.notify(pool)
}

// ObserveReclaim implements ReclaimFeed. A node already counted within
// ReclaimMemory is not counted again, whichever copy of the model counted it.
func (m *RiskModel) ObserveReclaim(pool Pool, node string, at time.Time) {
	m.mu.Lock()
	e := m.ev(pool)
	now := m.cfg.Clock.Now()
	for n, until := range e.counted {
		if !now.Before(until) {
			delete(e.counted, n)
		}
	}
	if _, ok := e.counted[node]; ok && node != "" {
		m.mu.Unlock()
		return
	}
	if node != "" {
		e.markCounted(node, now.Add(ReclaimMemory))
	}
	e.reclaims += m.decayTo(e, at)
	e.total++
	metricReclaims.WithLabelValues(pool.InstanceType, pool.Zone, string(pool.Capacity)).Inc()
	m.publish(pool)
	m.mu.Unlock()
	select {
	case m.changed <- struct{}{}:
	default:
	}
	m.notify(pool)
}

// ReclaimRate implements RiskSource: the posterior mean rate per node-hour.
func (m *RiskModel) ReclaimRate(pool Pool) float64 {
	if pool.Capacity != Spot {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rate(pool)
}

func (m *RiskModel) rate(pool Pool) float64 {
	return m.posterior(pool, m.prior(pool))
}

// posterior is the pool's mean rate from prior b and the evidence,
// discounted to now.
func (m *RiskModel) posterior(pool Pool, b Bucket) float64 {
	alpha, beta, reclaims, nodeHours := m.terms(pool, b)
	return (alpha + reclaims) / (beta + nodeHours)
}

// terms are the Gamma prior's shape and rate from bucket b and the pool's
// evidence discounted to now: the mean is (alpha + reclaims) / (beta +
// nodeHours).
func (m *RiskModel) terms(pool Pool, b Bucket) (alpha, beta, reclaims, nodeHours float64) {
	beta = m.cfg.PriorNodeHours
	alpha = RateFromMonthly(b.MonthlyProbability()) * beta
	if e := m.pools[pool]; e != nil {
		reclaims, nodeHours = m.decayed(e, m.cfg.Clock.Now())
	}
	return alpha, beta, reclaims, nodeHours
}

// FallsTo is how long, if no evidence comes, until the pool's rate is at
// most rate: 0 if it is already, false if decay alone never takes it there
// (its prior is not below rate). As evidence decays by f = 2^(-t/HalfLife)
// the mean (alpha + reclaims f) / (beta + nodeHours f) moves steadily
// towards the prior alpha / beta, so the time is exact, solved for f: a
// caller can arm one timer rather than read the rate every so often. New
// evidence moves it (OnChange says when).
func (m *RiskModel) FallsTo(pool Pool, rate float64) (time.Duration, bool) {
	if pool.Capacity != Spot {
		return 0, rate >= 0
	}
	m.mu.Lock()
	alpha, beta, reclaims, nodeHours := m.terms(pool, m.prior(pool))
	m.mu.Unlock()
	if alpha+reclaims <= rate*(beta+nodeHours) {
		return 0, true
	}
	if alpha >= rate*beta {
		return 0, false
	}
	// Above rate now and the prior below it: the denominator exceeds the
	// positive numerator, and f is in (0, 1).
	f := (rate*beta - alpha) / (reclaims - rate*nodeHours)
	if !(f < 1) {
		return 0, true
	}
	d := -math.Log2(f) * m.cfg.HalfLife.Hours() * float64(time.Hour)
	if d >= math.MaxInt64 {
		return math.MaxInt64, true
	}
	return time.Duration(d), true
}

// Reclaims is how many reclaims of the pool this model observed (evidence
// merged from a saved copy is not counted).
func (m *RiskModel) Reclaims(pool Pool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.pools[pool]; e != nil {
		return e.total
	}
	return 0
}

// Refresh publishes every Spot pool's rate as of now. Rates drift back to
// their priors as evidence ages, and a pool with no nodes left gets no new
// evidence to publish on: FeedExposure calls this at each count.
func (m *RiskModel) Refresh() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for pool := range m.priors {
		m.publish(pool)
	}
	for pool := range m.pools {
		if _, ok := m.priors[pool]; !ok {
			m.publish(pool)
		}
	}
}

func (m *RiskModel) publish(pool Pool) {
	if pool.Capacity != Spot {
		return
	}
	metricReclaimRate.WithLabelValues(pool.InstanceType, pool.Zone, string(pool.Capacity)).Set(m.rate(pool))
}

// EnsurePrior makes b, the catalog's bucket for the pool, its prior unless
// SetPrior set one: a catalog that moves a pool to another bucket moves its
// prior at the next read, the evidence kept. The scheduler calls it for
// pools whose nodes exist; for a node that may not (Cluster Autoscaler's
// template of a group it could grow) RateFrom prices the pool without
// remembering it.
func (m *RiskModel) EnsurePrior(pool Pool, b Bucket) {
	m.mu.Lock()
	if cur, ok := m.priors[pool]; m.pinned[pool] || ok && cur == b {
		m.mu.Unlock()
		return
	}
	m.priors[pool] = b
	m.publish(pool)
	m.mu.Unlock()
	m.notify(pool)
}

// OnChange registers f to run after a pool's evidence or prior changes (a
// reclaim, exposure, a new prior, a merged copy), outside the model's lock:
// f may read rates. Decay is no change: FallsTo says when it crosses a rate.
func (m *RiskModel) OnChange(f func(Pool)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onChange = append(m.onChange, f)
}

// notify runs the OnChange hooks for pools; m.mu is not held.
func (m *RiskModel) notify(pools ...Pool) {
	m.mu.Lock()
	hooks := m.onChange
	m.mu.Unlock()
	for _, pool := range pools {
		for _, f := range hooks {
			f(pool)
		}
	}
}

// RateFrom is ReclaimRate for a pool whose prior is b, the catalog's bucket,
// as EnsurePrior would make it (unless SetPrior set one), and leaves the
// model as it was: a request that names made-up zones cannot grow the model
// or its metrics, and a pool with no node left, whose prior no read moves,
// is priced by the catalog in force rather than by the one its last node
// was read under.
func (m *RiskModel) RateFrom(pool Pool, b Bucket) float64 {
	if pool.Capacity != Spot {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pinned[pool] || b == BucketUnknown {
		b = m.prior(pool)
	}
	return m.posterior(pool, b)
}

// Evidence is what the model holds of a pool: the reclaims and node-hours
// observed, discounted to now by the half-life.
func (m *RiskModel) Evidence(pool Pool, now time.Time) (reclaims, nodeHours float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.pools[pool]
	if e == nil {
		return 0, 0
	}
	return m.decayed(e, now)
}
