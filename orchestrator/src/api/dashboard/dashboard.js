// Umbra's read-only dashboard. It polls this orchestrator's operator API about once a
// second with the bearer token the operator gave it, and redraws: who leads, every
// migration's timeline (phases from the audit log, steps, share, readiness, DNS TTL), the
// regions and their serving pools over time since the page opened, the leader's demand
// forecast per service, capacity claims and the audit log. It never writes: it only sends
// GETs. The token lives in this tab's sessionStorage, never in the address bar.
'use strict';

(() => {
  /** Time between two polls of the API (ms). */
  const POLL_MS = 1000;
  /** The forecast changes once a slice; asking every few seconds is plenty. */
  const FORECAST_EVERY_MS = 5000;
  /** Audit pages read per poll (1000 entries each), so a long log catches up without a stall. */
  const AUDIT_PAGES_PER_POLL = 5;
  const AUDIT_PAGE = 1000;
  /** Audit rows the table shows (newest first), and pool samples kept per pool (an hour). */
  const AUDIT_ROWS = 300;
  const POOL_SAMPLES = 3600;
  const TOKEN_KEY = 'umbra.api-token';
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const PHASE_COLOURS = {
    planned: '#6b7785', provisioning: '#a47cff', warming: '#f2994a', replicating: '#f2c94c',
    ready: '#2ec4b6', cutting_over: '#5aa9ff', draining: '#56ccf2', completed: '#3ecf8e',
    rolling_back: '#ff8a65', rolled_back: '#ff6b6b', failed: '#e0245e',
  };

  const page = {
    token: null,
    status: null,
    capacity: null,
    /** Every audit entry that names a migration's phase, by migration id, in log order. */
    phaseEntries: new Map(),
    /** The most recent audit entries, oldest first. */
    audit: [],
    auditAfter: 0,
    /** Pool samples by "service/region": {t, warm, dormant, targetWarm, targetDormant}. */
    pools: new Map(),
    forecasts: new Map(),
    forecastAskedAt: 0,
    lastAnswerAt: null,
    error: null,
  };

  // ---- Instants -------------------------------------------------------------------------

  /** The instant `name` of `record` (an RFC 3339 string in every API answer) in Unix ms, or null. */
  function instant(record, name) {
    const text = record ? record[name] : null;
    if (typeof text !== 'string') return null;
    const ms = Date.parse(text);
    return Number.isNaN(ms) ? null : ms;
  }

  function clock(ms) {
    return ms == null ? '—' : new Date(ms).toISOString().slice(11, 19);
  }

  function fullTime(ms) {
    return ms == null ? '' : new Date(ms).toISOString().replace('.000Z', 'Z');
  }

  function duration(ms) {
    if (ms == null || ms < 0) return '—';
    const s = ms / 1000;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 120) return `${Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 120) return `${m} min ${Math.round(s - m * 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function relative(ms) {
    if (ms == null) return '';
    const delta = ms - Date.now();
    return delta >= 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
  }

  // ---- DOM ------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function build(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'colour') node.style.color = value;
      else if (key === 'width%') node.style.width = `${value}%`;
      else if (key === 'background') node.style.background = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child == null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replace(id, ...children) {
    document.getElementById(id).replaceChildren(...children.flat(Infinity));
  }

  // ---- Phases ---------------------------------------------------------------------------

  function snake(name) {
    return name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
  }

  /** A phase as the API's `phase` strings say it (`cutting_over[1]`), from its JSON form. */
  function phaseName(phase) {
    if (typeof phase === 'string') return snake(phase);
    if (phase && typeof phase === 'object') {
      const [kind, body] = Object.entries(phase)[0] || ['unknown', null];
      const step = body && typeof body.step === 'number' ? `[${body.step}]` : '';
      return snake(kind) + step;
    }
    return 'unknown';
  }

  function phaseKind(name) {
    return name.replace(/\[\d+\]$/, '');
  }

  function phaseStep(name) {
    const m = /\[(\d+)\]$/.exec(name);
    return m ? Number(m[1]) : null;
  }

  function colour(name) {
    return PHASE_COLOURS[phaseKind(name)] || '#8796a5';
  }

  /** The audit event's kind (`transition`) and its body. */
  function eventOf(entry) {
    const event = entry.event;
    if (typeof event === 'string') return [event, {}];
    const [kind, body] = Object.entries(event || {})[0] || ['unknown', {}];
    return [kind, body || {}];
  }

  /** The phase a migration entered with this audit entry, or null. */
  function enteredPhase(entry) {
    const [kind, body] = eventOf(entry);
    if (kind === 'migration_created') return 'planned';
    if (kind === 'transition') return phaseName(body.to);
    return null;
  }

  function describe(entry) {
    const [kind, body] = eventOf(entry);
    switch (kind) {
      case 'plan_applied':
        return `plan applied: ${body.regions} region(s), ${body.services} service(s), ${body.schedules} schedule(s)`;
      case 'migration_created':
        return `created: ${body.service} ${body.from} → ${body.to}, cutover ${fullTime(instant(body, 'cutover_at'))}`;
      case 'transition':
        return `${phaseName(body.from)} → ${phaseName(body.to)}`;
      case 'writer_moved':
        return `writer → ${body.to_target ? 'target' : 'source'}`;
      case 'dns_weights':
        return `DNS weights ${Object.entries(body.weights || {}).map(([r, w]) => `${r}=${w}`).join(' ')}, TTL ${body.ttl_secs} s`;
      case 'capacity_claimed':
        return `claimed ${body.instances} instance(s) of ${body.service} in ${body.region}`;
      case 'capacity_released':
        return `released ${body.instances} instance(s) of ${body.service} in ${body.region}`;
      default:
        return kind.replace(/_/g, ' ');
    }
  }

  /** Every phase a migration went through, from the audit log: name, start, end, reason. */
  function phaseSpans(id) {
    const spans = [];
    for (const entry of page.phaseEntries.get(id) || []) {
      const start = instant(entry, 'at');
      if (spans.length) spans[spans.length - 1].end = start;
      spans.push({ name: enteredPhase(entry), start, end: null, reason: entry.reason, index: entry.index });
    }
    return spans;
  }

  // ---- Polling --------------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${page.token}`, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'same-origin',
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) throw new Unauthorized((body && body.error) || 'the token was refused');
    if (!response.ok) {
      const why = (body && body.error) || response.statusText;
      throw new Error(`${path}: ${response.status} ${why}`);
    }
    return body;
  }

  async function readAudit() {
    for (let page_ = 0; page_ < AUDIT_PAGES_PER_POLL; page_ += 1) {
      const entries = await api(`/v1/audit?after=${page.auditAfter}&limit=${AUDIT_PAGE}`);
      for (const entry of entries) {
        if (entry.index <= page.auditAfter) continue;
        page.auditAfter = entry.index;
        page.audit.push(entry);
        if (enteredPhase(entry) !== null) {
          if (!page.phaseEntries.has(entry.subject)) page.phaseEntries.set(entry.subject, []);
          page.phaseEntries.get(entry.subject).push(entry);
        }
      }
      if (page.audit.length > AUDIT_ROWS) page.audit.splice(0, page.audit.length - AUDIT_ROWS);
      if (entries.length < AUDIT_PAGE) return;
    }
  }

  function samplePools(now) {
    for (const pool of page.status.pools || []) {
      const key = `${pool.service}/${pool.region}`;
      if (!page.pools.has(key)) page.pools.set(key, []);
      const samples = page.pools.get(key);
      samples.push({
        t: now,
        warm: pool.actual.warm,
        dormant: pool.actual.dormant,
        targetWarm: pool.target.warm,
        targetDormant: pool.target.dormant,
      });
      if (samples.length > POOL_SAMPLES) samples.splice(0, samples.length - POOL_SAMPLES);
    }
  }

  async function readForecasts(now) {
    const leader = page.status.leader || {};
    if (leader.leader == null || leader.leader !== leader.this_node) {
      page.forecasts.clear();
      return;
    }
    if (now - page.forecastAskedAt < FORECAST_EVERY_MS) return;
    page.forecastAskedAt = now;
    const services = page.status.overview.services || {};
    for (const [name, service] of Object.entries(services)) {
      const region = service.primary_region;
      const query = `service=${encodeURIComponent(name)}&region=${encodeURIComponent(region)}`;
      try {
        page.forecasts.set(name, await api(`/v1/forecast?${query}`));
      } catch (error) {
        if (error instanceof Unauthorized) throw error;
        page.forecasts.set(name, { service: name, region, error: error.message });
      }
    }
  }

  async function poll() {
    try {
      page.status = await api('/v1/status');
      await readAudit();
      page.capacity = await api('/v1/capacity');
      const now = Date.now();
      samplePools(now);
      await readForecasts(now);
      page.lastAnswerAt = now;
      page.error = null;
    } catch (error) {
      if (error instanceof Unauthorized) {
        askForToken(`${error.message}`);
        return;
      }
      page.error = error.message || String(error);
    }
    render();
    window.setTimeout(poll, POLL_MS);
  }

  // ---- Token ----------------------------------------------------------------------------

  /** The token from `#token=...` (moved to sessionStorage and out of the address bar). */
  function takeToken() {
    const fragment = new URLSearchParams(window.location.hash.slice(1));
    const given = fragment.get('token');
    if (given) {
      window.sessionStorage.setItem(TOKEN_KEY, given.trim());
      window.history.replaceState(null, '', window.location.pathname + window.location.search);
    }
    return window.sessionStorage.getItem(TOKEN_KEY);
  }

  function askForToken(why) {
    window.sessionStorage.removeItem(TOKEN_KEY);
    page.token = null;
    document.getElementById('board').hidden = true;
    document.getElementById('token-form').hidden = false;
    document.getElementById('token-error').textContent = why || '';
    document.getElementById('token-input').focus();
  }

  function start(token) {
    page.token = token;
    document.getElementById('token-form').hidden = true;
    document.getElementById('board').hidden = false;
    poll();
  }

  // ---- Rendering ------------------------------------------------------------------------

  function render() {
    renderHeader();
    if (!page.status) return;
    renderMigrations();
    renderRegions();
    renderPools();
    renderForecasts();
    renderClaims();
    renderAudit();
  }

  function renderHeader() {
    const freshness = document.getElementById('freshness');
    if (page.error) {
      freshness.dataset.state = 'error';
      freshness.textContent = `API: ${page.error}${page.lastAnswerAt ? ` (last answer ${relative(page.lastAnswerAt)})` : ''}`;
    } else if (page.lastAnswerAt) {
      freshness.dataset.state = 'live';
      freshness.textContent = `live · updated ${clock(page.lastAnswerAt)} UTC`;
    }
    if (!page.status) return;
    document.getElementById('origin').textContent = window.location.host;
    const leader = page.status.leader || {};
    const box = document.getElementById('leader');
    box.dataset.leader = leader.leader == null ? '' : String(leader.leader);
    box.dataset.thisNode = leader.this_node == null ? '' : String(leader.this_node);
    const leads = leader.leader != null && leader.leader === leader.this_node;
    box.replaceChildren(
      leader.leader == null
        ? el('span', { class: 'pill bad', text: 'no leader' })
        : el('span', { class: 'pill good', text: `node ${leader.leader} leads` }),
      el('span', { class: 'pill', text: `term ${leader.term}` }),
      el('span', {
        class: leads ? 'pill good' : 'pill warn',
        text: leads ? `this is node ${leader.this_node}, the leader` : `this is node ${leader.this_node}, a follower`,
      }),
    );
  }

  function renderMigrations() {
    const migrations = page.status.migrations || [];
    if (!migrations.length) {
      replace('migrations', el('p', { class: 'note', text: 'no migration yet' }));
      return;
    }
    replace('migrations', migrations.map(renderMigration));
  }

  function renderMigration(m) {
    const spans = phaseSpans(m.id);
    const since = instant(m, 'phase_since');
    const cutover = instant(m, 'cutover_at');
    const tone = m.phase === 'completed' ? 'good' : /roll|fail/.test(m.phase) ? 'bad' : 'warn';
    return el('article', {
      class: 'migration', id: `migration-${m.id}`, 'data-migration': m.id,
      'data-phase': m.phase, 'data-terminal': String(m.terminal),
    },
    el('div', { class: 'head' },
      el('h3', { text: m.id }),
      el('span', { class: 'route', text: `${m.service}: ${m.from} → ${m.to}` }),
      el('span', { class: `pill ${tone}`, 'data-role': 'phase', text: m.phase }),
      el('span', { class: 'muted', text: `since ${clock(since)} UTC (${relative(since)})` })),
    el('div', { class: 'facts' },
      el('span', {}, 'cutover ', el('b', { text: `${clock(cutover)} UTC` }), ` ${relative(cutover)}`),
      el('span', { 'data-role': 'share' }, 'target share ', el('b', { text: `${m.target_share_percent} %` })),
      el('span', {}, 'shadow pool ', el('b', { text: `${m.shadow_instances} instance(s)` })),
      el('span', {}, 'writer ', el('b', { text: m.promoted ? 'target (promoted)' : 'source' })),
      el('span', {}, 'stages ', el('b', { text: `${m.stages_done} of ${m.stages_total}` })),
      renderTtl(m.dns_ttl)),
    renderSteps(m, spans),
    renderReadiness(m.readiness),
    renderGantt(spans, m.terminal),
    renderTimeline(m.id, spans, m.terminal));
  }

  function renderTtl(ttl) {
    if (!ttl) return null;
    const lowered = instant(ttl, 'lowered_at');
    const text = ttl.old_ttl_secs === ttl.low_ttl_secs
      ? `${ttl.old_ttl_secs} s (not lowered)`
      : `${ttl.old_ttl_secs} → ${ttl.low_ttl_secs} s${lowered ? ` at ${clock(lowered)}` : ` at ${clock(instant(ttl, 'lower_at'))} (planned)`}`;
    return el('span', {}, 'DNS TTL ', el('b', { text }),
      ttl.late ? el('span', { class: 'pill warn', title: 'the low TTL reaches every cache only after the cutover starts', text: 'LATE' }) : null);
  }

  /** Each cutover step: done, current, reverted by a rollback, or still to come. */
  function renderSteps(m, spans) {
    const shares = Array.isArray(m.steps_percent) ? m.steps_percent : [];
    if (!shares.length) return null;
    const reached = spans.map((s) => phaseStep(s.name)).filter((s) => s !== null);
    const highest = reached.length ? Math.max(...reached) : -1;
    const current = phaseStep(m.phase);
    const rolledBack = /roll|fail/.test(m.phase);
    const finished = ['draining', 'completed'].includes(m.phase);
    return el('div', { class: 'steps', 'data-role': 'steps' },
      el('span', { class: 'muted', text: 'cutover steps' }),
      shares.map((share, step) => {
        let state = 'pending';
        if (finished || (current !== null && step < current) || (!rolledBack && current === null && step <= highest)) state = 'done';
        if (current === step) state = 'current';
        if (rolledBack && step <= highest) state = 'reverted';
        return el('span', { class: 'step', 'data-step': step, 'data-share': share, 'data-state': state, title: state, text: `${share} %` });
      }));
  }

  function renderReadiness(readiness) {
    if (!readiness) return null;
    return el('div', { 'data-role': 'readiness', 'data-score': readiness.score },
      el('div', { class: 'facts' }, 'readiness ', el('b', { text: `${readiness.score} / 100` })),
      el('div', { class: 'gates' },
        (readiness.gates || []).map((gate) => [
          el('span', { class: 'mono', 'data-gate': gate.name, text: gate.name }),
          el('div', { class: 'bar gate-bar', 'data-holds': String(gate.holds) },
            el('span', { 'width%': Math.round((gate.progress || 0) * 100) })),
          el('span', { class: 'muted', text: gate.detail }),
        ])));
  }

  function renderGantt(spans, terminal) {
    if (!spans.length) return null;
    const now = Date.now();
    const t0 = spans[0].start;
    const t1 = terminal ? spans[spans.length - 1].start : now;
    const total = Math.max(t1 - t0, 1);
    const width = 1000;
    const chart = svg('svg', { class: 'gantt', viewBox: `0 0 ${width} 34`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'phases over time' });
    spans.forEach((span, i) => {
      const end = span.end ?? (terminal ? span.start : now);
      const x = ((span.start - t0) / total) * width;
      const w = Math.max(((end - span.start) / total) * width, terminal && i === spans.length - 1 ? 0 : 2);
      chart.append(svg('rect', { x: x.toFixed(1), y: 4, width: w.toFixed(1), height: 22, fill: colour(span.name), rx: 2 },
        svg('title', { text: `${span.name}: ${duration(end - span.start)}` })));
    });
    return chart;
  }

  function renderTimeline(id, spans, terminal) {
    const now = Date.now();
    return el('ol', { class: 'timeline', 'data-timeline': id },
      spans.map((span, i) => {
        const last = i === spans.length - 1;
        const end = span.end ?? (terminal ? null : now);
        return el('li', {
          class: 'phase', 'data-phase': span.name, 'data-index': span.index,
          'data-entered': fullTime(span.start), 'data-current': String(last && !terminal),
        },
        el('span', { class: 'swatch', background: colour(span.name) }),
        el('time', { datetime: fullTime(span.start), title: fullTime(span.start), text: clock(span.start) }),
        el('span', { class: 'phase-name', text: span.name }),
        el('span', { class: 'mono', text: end == null ? '' : `${duration(end - span.start)}${span.end == null ? ' …' : ''}` }),
        el('span', { class: 'reason', text: span.reason }));
      }));
  }

  function renderRegions() {
    const overview = page.status.overview;
    const services = Object.entries(overview.services || {});
    const pools = page.status.pools || [];
    const cards = Object.keys(overview.regions || {}).map((region) => {
      const serving = services.filter(([, s]) => s.primary_region === region).map(([name]) => name);
      const rows = [];
      for (const [name] of services) {
        const weights = ((overview.dns || {})[name] || {}).weights || {};
        if (weights[region] != null) rows.push([`DNS ${name}`, `weight ${weights[region]}`]);
      }
      for (const pool of pools.filter((p) => p.region === region)) {
        rows.push([`pool ${pool.service}`,
          `${pool.actual.warm} warm + ${pool.actual.dormant} dormant (target ${pool.target.warm} + ${pool.target.dormant})`]);
      }
      return el('div', { class: 'region', 'data-region': region, 'data-serving': String(serving.length > 0) },
        el('div', { class: 'name', text: region }),
        el('div', { class: serving.length ? 'pill good' : 'pill', text: serving.length ? `serves ${serving.join(', ')}` : 'serves nothing' }),
        el('dl', {}, rows.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])));
    });
    replace('regions', cards);
  }

  // ---- Charts ---------------------------------------------------------------------------

  const CHART = { width: 640, height: 180, left: 42, right: 12, top: 20, bottom: 24 };

  function scale(domain, range) {
    const [d0, d1] = domain;
    const [r0, r1] = range;
    const span = d1 - d0 || 1;
    return (v) => r0 + ((v - d0) / span) * (r1 - r0);
  }

  function niceMax(value) {
    if (value <= 4) return 4;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
    return value;
  }

  /** Axes and grid for a time chart; returns the svg and its scales. */
  function timeFrame(t0, t1, yMax, yUnit) {
    const c = CHART;
    const x = scale([t0, t1], [c.left, c.width - c.right]);
    const y = scale([0, yMax], [c.height - c.bottom, c.top]);
    const chart = svg('svg', { viewBox: `0 0 ${c.width} ${c.height}`, role: 'img' });
    for (let i = 0; i <= 4; i += 1) {
      const v = (yMax / 4) * i;
      chart.append(svg('line', { class: 'grid', x1: c.left, x2: c.width - c.right, y1: y(v), y2: y(v) }),
        svg('text', { x: c.left - 6, y: y(v) + 4, 'text-anchor': 'end', text: Number.isInteger(v) ? v : v.toFixed(1) }));
    }
    for (let i = 0; i <= 4; i += 1) {
      const t = t0 + ((t1 - t0) / 4) * i;
      chart.append(svg('text', { x: x(t), y: c.height - 6, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle', text: clock(t) }));
    }
    chart.append(svg('text', { x: c.left, y: 11, 'text-anchor': 'start', text: yUnit }));
    return { chart, x, y };
  }

  function stepPath(points, x, y) {
    let d = '';
    points.forEach(([t, v], i) => {
      d += i === 0 ? `M${x(t).toFixed(1)},${y(v).toFixed(1)}` : `H${x(t).toFixed(1)}V${y(v).toFixed(1)}`;
    });
    return d;
  }

  function legend(items) {
    return el('div', { class: 'legend' }, items.map(([label, c, dashed]) =>
      el('span', { colour: c }, el('i', { class: dashed ? 'dash' : null, background: dashed ? null : c }), el('span', { text: label }))));
  }

  function renderPools() {
    if (!page.pools.size) {
      const leader = page.status.leader || {};
      const why = leader.leader != null && leader.leader !== leader.this_node
        ? `pools come from the leader's executor: open node ${leader.leader}'s dashboard to see them`
        : 'no pool sized yet';
      replace('pools', el('p', { class: 'note', text: why }));
      return;
    }
    const now = Date.now();
    const charts = [...page.pools.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([key, samples]) => {
      const t0 = samples[0].t;
      const t1 = Math.max(now, t0 + 10_000);
      const yMax = niceMax(Math.max(...samples.map((s) => Math.max(s.warm + s.dormant, s.targetWarm + s.targetDormant))));
      const { chart, x, y } = timeFrame(t0, t1, yMax, 'instances');
      const extended = (pick) => {
        const points = samples.map((s) => [s.t, pick(s)]);
        points.push([t1, pick(samples[samples.length - 1])]);
        return points;
      };
      const series = [
        ['target warm', 'var(--warm)', true, (s) => s.targetWarm],
        ['target dormant', 'var(--dormant)', true, (s) => s.targetDormant],
        ['warm (serving)', 'var(--warm)', false, (s) => s.warm],
        ['dormant', 'var(--dormant)', false, (s) => s.dormant],
      ];
      for (const [, c, dashed, pick] of series) {
        chart.append(svg('path', { d: stepPath(extended(pick), x, y), fill: 'none', stroke: c, 'stroke-width': dashed ? 1.5 : 2.5, 'stroke-dasharray': dashed ? '5 4' : null }));
      }
      const last = samples[samples.length - 1];
      return el('div', { class: 'chart', 'data-pool': key, 'data-samples': samples.length, 'data-warm': last.warm, 'data-dormant': last.dormant },
        el('h3', { text: `${key}: ${last.warm} warm, ${last.dormant} dormant (target ${last.targetWarm} + ${last.targetDormant})` }),
        chart,
        legend(series.map(([label, c, dashed]) => [label, c, dashed])));
    });
    replace('pools', charts);
  }

  function renderForecasts() {
    const leader = page.status.leader || {};
    if (leader.leader == null || leader.leader !== leader.this_node) {
      replace('forecasts', el('p', { class: 'note', text: leader.leader == null
        ? 'no node leads right now; the forecast comes from the leader'
        : `the leader holds the forecast: open node ${leader.leader}'s dashboard to see it` }));
      return;
    }
    if (!page.forecasts.size) {
      replace('forecasts', el('p', { class: 'note', text: 'asking the leader for its forecast…' }));
      return;
    }
    replace('forecasts', [...page.forecasts.values()].map(renderForecast));
  }

  function renderForecast(f) {
    const head = `${f.service} in ${f.region}`;
    if (f.error) {
      return el('div', { class: 'chart', 'data-forecast': `${f.service}/${f.region}` },
        el('h3', { text: head }), el('p', { class: 'note', text: f.error }));
    }
    const slices = (f.slices || []).map((s) => ({ t: instant(s, 'start'), mean: s.mean, q: s.quantile, warm: s.target.warm, dormant: s.target.dormant }))
      .filter((s) => s.t != null);
    if (!slices.length) {
      return el('div', { class: 'chart', 'data-forecast': `${f.service}/${f.region}`, 'data-slices': 0 },
        el('h3', { text: head }), el('p', { class: 'note', text: `no forecast: ${f.model}` }));
    }
    const width = slices.length > 1 ? slices[1].t - slices[0].t : 3600_000;
    const t0 = slices[0].t;
    const t1 = slices[slices.length - 1].t + width;
    const yMax = niceMax(Math.max(...slices.map((s) => Math.max(s.mean, s.q))));
    const { chart, x, y } = timeFrame(t0, t1, yMax, 'req/s');
    // The band: from the forecast mean up to the quantile the pool is sized for.
    let band = '';
    slices.forEach((s, i) => { band += `${i ? 'L' : 'M'}${x(s.t).toFixed(1)},${y(s.q).toFixed(1)}L${x(s.t + width).toFixed(1)},${y(s.q).toFixed(1)}`; });
    [...slices].reverse().forEach((s) => { band += `L${x(s.t + width).toFixed(1)},${y(s.mean).toFixed(1)}L${x(s.t).toFixed(1)},${y(s.mean).toFixed(1)}`; });
    chart.append(svg('path', { d: `${band}Z`, fill: 'rgba(90,169,255,0.22)', stroke: 'none' }));
    const mean = slices.map((s) => [s.t, s.mean]);
    mean.push([t1, slices[slices.length - 1].mean]);
    chart.append(svg('path', { d: stepPath(mean, x, y), fill: 'none', stroke: 'var(--accent)', 'stroke-width': 2 }));
    const now = Date.now();
    if (now >= t0 && now <= t1) chart.append(svg('line', { class: 'now', x1: x(now), x2: x(now), y1: CHART.top, y2: CHART.height - CHART.bottom }));
    const next = slices[0];
    return el('div', { class: 'chart', 'data-forecast': `${f.service}/${f.region}`, 'data-slices': slices.length },
      el('h3', { text: `${head}: ${next.mean.toFixed(0)} req/s forecast now, pool sized for ${next.q.toFixed(0)} req/s: ${next.warm} warm + ${next.dormant} dormant` }),
      chart,
      legend([['forecast mean', 'var(--accent)', false], ['up to the sized quantile', 'rgba(90,169,255,0.5)', false], ['now', 'var(--warn)', true]]),
      el('p', { class: 'note', text: `model: ${f.model}; ${slices.length} slices of ${duration(width)}` }));
  }

  function renderClaims() {
    const claims = (page.capacity && page.capacity.claims) || [];
    if (!claims.length) {
      replace('claims', el('p', { class: 'note', text: 'no capacity claim in force or ahead' }));
      return;
    }
    replace('claims', el('table', {},
      el('thead', {}, el('tr', {}, ['claim', 'service', 'region', 'instances', 'from', 'until', 'held by'].map((h) => el('th', { text: h })))),
      el('tbody', {}, claims.map((c) => el('tr', { 'data-claim': c.id },
        el('td', { class: 'mono', text: c.id }),
        el('td', { text: c.service }),
        el('td', { text: c.region }),
        el('td', { class: 'num', text: c.instances }),
        el('td', { class: 'num', text: clock(instant(c, 'start')) }),
        el('td', { class: 'num', text: clock(instant(c, 'end')) }),
        el('td', { text: c.fulfilment ? `${(c.fulfilment.members || []).length} instance(s)` : 'not in effect yet' }))))));
  }

  function renderAudit() {
    const rows = [...page.audit].reverse().map((entry) => {
      const at = instant(entry, 'at');
      const [kind] = eventOf(entry);
      return el('tr', { 'data-index': entry.index, 'data-subject': entry.subject, 'data-event': kind },
        el('td', { class: 'num', text: entry.index }),
        el('td', { class: 'num' }, el('time', { datetime: fullTime(at), title: fullTime(at), text: clock(at) })),
        el('td', { class: 'num', text: entry.term || '—' }),
        el('td', { class: 'mono', text: entry.subject }),
        el('td', { class: 'event', text: describe(entry) }),
        el('td', { class: 'reason', text: entry.reason }));
    });
    document.querySelector('#audit tbody').replaceChildren(...rows);
  }

  // ---- Start ----------------------------------------------------------------------------

  document.getElementById('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = document.getElementById('token-input').value.trim();
    if (!value) return;
    window.sessionStorage.setItem(TOKEN_KEY, value);
    document.getElementById('token-input').value = '';
    start(value);
  });

  const token = takeToken();
  if (token) start(token);
  else askForToken('');
})();
