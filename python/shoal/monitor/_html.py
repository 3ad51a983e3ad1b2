"""One self-contained HTML page for a Run: the verdict, the summary figures,
per-core heatmap, per-worker timeline, task-duration histogram and the
sampled CPU/memory series.

    Run ──► stats() ──────────────► verdict, figures (HTML text)
       └──► _analysis bins ──► JSON in a <script type="application/json">
                                  └──► inline JS draws each <canvas>

Nothing is fetched: no network, CDN or font; the JS is inline. Size stays
under 2 MB whatever the task count: up to RAW_TASKS task records the
timeline draws each task (times quantised to 1/QUANT of the wall time,
delta-encoded per worker); beyond, it draws per worker x time bin busy
fractions, and the page says so.
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import Any

import numpy as np

from . import _analysis
from ._run import OK, OUTCOMES, RETRIED, Run
from ._summary import stats as _stats, summary as _summary_text

RAW_TASKS = 100_000        # the timeline draws single tasks up to this many
QUANT = 1_000_000          # raw task times: steps of wall / QUANT
MAX_CELLS = 150_000        # per heatmap: rows x bins at most
MAX_BINS = 1000
RAW_BUDGET = 1_400_000     # bytes of raw timeline JSON before falling back to bins


def _heat_bins(rows: int) -> int:
    return int(max(50, min(MAX_BINS, MAX_CELLS // max(1, rows))))


def _timeline(run: Run, sched: _analysis.Schedule) -> dict[str, Any]:
    wall = max(sched.wall, int(sched.end.max()) if len(sched.end) else 0, 1)
    n = len(sched.worker)
    if 0 < n <= RAW_TASKS:
        q = wall / QUANT
        s = np.floor(sched.start / q).astype(np.int64)
        e = np.ceil(sched.end / q).astype(np.int64)
        rows = []
        b = sched.bounds
        for w in range(sched.workers):
            sw, ew = s[b[w]:b[w + 1]], e[b[w]:b[w + 1]]
            if len(sw) == 0:
                rows.append([[], []])
                continue
            gaps = sw - np.concatenate([[0], ew[:-1]])     # may be < 0 where records overlap
            rows.append([gaps.tolist(), (ew - sw).tolist()])
        outcome = run.tasks["outcome"][sched.index] if n else np.zeros(0)
        bad = np.flatnonzero((outcome != OK) & (outcome != RETRIED)).tolist()
        data = {"mode": "raw", "quant": QUANT, "rows": rows, "failed": bad,
                "failed_outcomes": [OUTCOMES[int(o)] for o in outcome[bad]] if bad else []}
        if len(json.dumps(data, separators=(",", ":"))) <= RAW_BUDGET:
            return data
    nbins = _heat_bins(sched.workers)
    edges, frac = _analysis.worker_bins(sched, nbins)
    return {"mode": "binned", "bins": nbins, "bin_s": float(edges[1] - edges[0]) / 1e9 if nbins else 0,
            "values": np.round(frac * 100).astype(int).reshape(-1).tolist(), "rows": sched.workers,
            "why": (f"{n:,} task records: more than {RAW_TASKS:,}, so each row shows the worker's busy "
                    f"fraction in {nbins} time bins of {_analysis_seconds(float(edges[1] - edges[0]) / 1e9)}"
                    if n > RAW_TASKS else
                    f"{n:,} task records did not fit the page's budget drawn one by one: binned")}


def _analysis_seconds(x: float) -> str:
    from ._summary import _seconds

    return _seconds(x)


def _cores(run: Run) -> dict[str, Any] | None:
    if run.core_busy.size == 0:
        return None
    c = run.core_busy.shape[1]
    edges, mean, ids = _analysis.core_bins(run, _heat_bins(c))
    vals = np.where(np.isnan(mean), -1, np.round(mean * 100)).astype(int)
    job = set(run.meta.get("cpu_ids") or [])
    return {"t0": float(edges[0]) / 1e9, "t1": float(edges[-1]) / 1e9, "bins": int(mean.shape[1]),
            "rows": int(mean.shape[0]), "ids": [int(i) for i in ids],
            "job": [bool(i in job) for i in ids] if job else [True] * len(ids),
            "values": vals.reshape(-1).tolist()}


def _series(run: Run, cpus: int) -> dict[str, Any]:
    """Sampled series, at most 2000 points each."""
    out: dict[str, Any] = {}

    def thin(t: np.ndarray, v: np.ndarray) -> list:
        step = max(1, int(math.ceil(len(t) / 2000)))
        return [np.round(t[::step] / 1e9, 4).tolist(), np.round(v[::step].astype(float), 3).tolist()]

    if run.core_busy.size:
        out["cores_busy"] = thin(run.core_t, run.core_busy.sum(axis=1))
    ss = run.system_samples
    if len(ss):
        out["runnable"] = thin(ss["t"], ss["procs_running"])
        if int(ss["mem_current"].max()) > 0:
            out["memory"] = thin(ss["t"], ss["mem_current"] / 2**30)
    gs = run.gpu_samples
    if len(gs):
        out["gpu_util"] = thin(gs["t"], gs["util"])
    out["cpus"] = cpus
    limit = run.meta.get("memory_limit")
    out["memory_limit"] = limit / 2**30 if limit else None
    return out


def _figures_table(s: dict[str, Any]) -> str:
    from ._summary import _bytes, _pct, _seconds

    d = s["duration_s"]
    rows = [("wall time", _seconds(s["wall_s"])),
            ("CPUs given", f"{s['cpus']} ({s['cpus_source']})"),
            ("CPU efficiency", f"{_pct(s['efficiency'])} (busy core-seconds from {s['busy_source']})")]
    if s["measured_efficiency"] is not None:
        rows.append(("measured CPU", f"{_pct(s['measured_efficiency'])} ({s['measured_cpu_s']:.4g} CPU-s)"))
    rows.append(("workers", str(s["workers"])))
    rows.append(("tasks", f"{s['tasks']:,}" + (" (" + ", ".join(f"{k} {v:,}" for k, v in s["outcomes"].items()) + ")"
                                                if s["outcomes"] else "")))
    if d["p50"] is not None:
        rows.append(("task duration", f"p50 {_seconds(d['p50'])}, p90 {_seconds(d['p90'])}, "
                                      f"p99 {_seconds(d['p99'])}, max {_seconds(d['max'])}"))
        rows.append(("overhead", f"{_pct(s['overhead_share'])} of worker time idle with a task queued"))
    if s["memory_peak"]:
        rows.append(("memory peak", _bytes(s["memory_peak"])
                     + (f" of {_bytes(s['memory_limit'])} ({_pct(s['memory_share'])})" if s["memory_limit"] else "")))
    rows.append(("GPU", ", ".join(f"{g['name']} {g['util_mean']:.0f}% mean" for g in s["gpus"])
                 or (s["gpu_note"] or "no GPU samples")))
    if s["dropped"]:
        rows.append(("dropped records", f"{s['dropped']:,}"))
    if s["truncated"]:
        rows.append(("file", f"truncated: {s['truncated']}"))
    return "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff;max-width:1280px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 6px}
.sub{color:#666;margin-bottom:12px} .note{color:#666;font-size:12px;margin:2px 0 6px}
.verdict{padding:10px 14px;border-radius:6px;border-left:6px solid #888;background:#f4f4f4;font-weight:600}
.verdict.bad{border-color:#c62828;background:#fdecea}.verdict.warn{border-color:#ef6c00;background:#fff3e0}
.verdict.good{border-color:#2e7d32;background:#e8f5e9}.verdict.note{border-color:#0277bd;background:#e1f5fe}
ul.advice{margin:6px 0 0 0} ul.advice li{margin:3px 0} ul.advice .a{color:#444;font-weight:400}
table.fig{border-collapse:collapse;margin-top:8px} table.fig th{text-align:left;padding:2px 14px 2px 0;color:#555;font-weight:500}
canvas{display:block;border:1px solid #ddd;margin-top:4px} pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
#errors{color:#c62828} #tip{position:fixed;display:none;background:#222;color:#fff;padding:3px 7px;border-radius:4px;font-size:12px;pointer-events:none;white-space:nowrap} .legend span{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 10px}
"""

_JS = r"""
(function(){
var errs=document.getElementById('errors');
function fail(m){errs.textContent+=m+'\n';document.title='shoal report: error';document.body.setAttribute('data-status','error');}
window.addEventListener('error',function(e){fail('error: '+e.message);});
try{
var D=JSON.parse(document.getElementById('shoal-data').textContent);
var wall=D.wall,AX=D.axis;   // every chart shares the time axis [0, AX] seconds
var tip=document.getElementById('tip');
function hover(id,fn){var c=document.getElementById(id);c.addEventListener('mousemove',function(ev){
 var b=c.getBoundingClientRect();var t=fn(ev.clientX-b.left,ev.clientY-b.top);
 if(t){tip.textContent=t;tip.style.display='block';tip.style.left=(ev.clientX+14)+'px';tip.style.top=(ev.clientY+14)+'px';}
 else tip.style.display='none';});c.addEventListener('mouseleave',function(){tip.style.display='none';});}
var W=1180,L=90,R=16;
function heatColor(v){if(v<0)return '#ffffff';var f=v/100;
 var r=Math.round(240-f*(240-21)),g=Math.round(244-f*(244-101)),b=Math.round(250-f*(250-192));return 'rgb('+r+','+g+','+b+')';}
function ticks(a,b,n){var span=b-a;if(span<=0)return [a];var step=Math.pow(10,Math.floor(Math.log10(span/n)));
 var m=span/n/step;step*=m>5?10:m>2?5:m>1?2:1;var out=[];for(var t=Math.ceil(a/step)*step;t<=b+1e-12;t+=step)out.push(t);return out;}
function fmtS(t){var a=Math.abs(t);if(a==0)return '0';if(a>=1)return +t.toPrecision(4)+' s';if(a>=1e-3)return +(t*1e3).toPrecision(3)+' ms';
 if(a>=1e-6)return +(t*1e6).toPrecision(3)+' us';return +(t*1e9).toPrecision(3)+' ns';}
function canvas(id,h){var c=document.getElementById(id);var dpr=window.devicePixelRatio||1;c.width=W*dpr;c.height=h*dpr;
 c.style.width=W+'px';c.style.height=h+'px';var x=c.getContext('2d');x.scale(dpr,dpr);x.font='11px sans-serif';
 x.fillStyle='#fff';x.fillRect(0,0,W,h);return x;}
function timeAxis(x,t0,t1,y,h){x.fillStyle='#555';x.strokeStyle='#ccc';var ts=ticks(t0,t1,8);
 for(var i=0;i<ts.length;i++){var px=L+(ts[i]-t0)/(t1-t0)*(W-L-R);x.beginPath();x.moveTo(px,y);x.lineTo(px,y+4);x.stroke();
 x.fillText(fmtS(ts[i]),px-12,y+15);}}
function heat(id,rows,bins,vals,labels,t0,t1,mark){var rh=Math.max(2,Math.min(16,Math.floor(480/Math.max(1,rows))));
 var h=rows*rh+30;var x=canvas(id,h);var px0=L+t0/AX*(W-L-R),cw=(t1-t0)/AX*(W-L-R)/bins;
 for(var r=0;r<rows;r++){for(var b=0;b<bins;b++){x.fillStyle=heatColor(vals[r*bins+b]);x.fillRect(px0+b*cw,r*rh,Math.ceil(cw),rh);}
  if(rh>=9||r%Math.ceil(9/rh)==0){x.fillStyle=(mark&&!mark[r])?'#aaa':'#333';x.fillText(labels[r],4,r*rh+Math.min(rh,12)-1);}}
 timeAxis(x,0,AX,rows*rh+2,h);
 hover(id,function(px,py){var r=Math.floor(py/rh);if(r<0||r>=rows||px<L)return null;var t=(px-L)/(W-L-R)*AX;
  var b=Math.floor((t-t0)/(t1-t0)*bins);if(b<0||b>=bins)return labels[r]+' · '+fmtS(t);var v=vals[r*bins+b];
  return labels[r]+' · '+fmtS(t)+' · '+(v<0?'no sample':'busy '+v+'%');});}
// per-core heatmap
if(D.cores){var C=D.cores;var lab=C.ids.map(function(i,k){return 'core '+i+(C.job[k]?'':' *');});
 heat('cores',C.rows,C.bins,C.values,lab,C.t0,C.t1,C.job);}
// per-worker timeline
var T=D.timeline;var nw=T.rows.length!==undefined&&T.mode=='raw'?T.rows.length:T.rows;
var wl=[];for(var i=0;i<nw;i++)wl.push('worker '+i);
if(T.mode=='binned'){heat('workers',nw,T.bins,T.values,wl,0,wall);}
else if(nw>0){var rh=Math.max(2,Math.min(16,Math.floor(480/nw)));var h=nw*rh+30;var x=canvas('workers',h);
 var sc=(W-L-R)/T.quant*wall/AX;var pal=['#1565c0','#2e7d32','#6a1b9a','#00838f','#ef6c00','#4e342e'];
 var failed={};for(var k=0;k<T.failed.length;k++)failed[T.failed[k]]=k;var idx=0;var rowsS=[],rowsE=[],rowsI=[];
 for(var r=0;r<nw;r++){var g=T.rows[r][0],d=T.rows[r][1],t=0;x.fillStyle='#f4f6fa';x.fillRect(L,r*rh,W-L-R,rh-1);
  var S0=new Float64Array(g.length),E0=new Float64Array(g.length);rowsS.push(S0);rowsE.push(E0);rowsI.push(idx);
  for(var j=0;j<g.length;j++){t+=g[j];S0[j]=t;var px=L+t*sc,pw=Math.max(1,d[j]*sc);
   x.fillStyle=(idx in failed)?'#c62828':pal[r%pal.length];x.fillRect(px,r*rh,pw,rh-1);t+=d[j];E0[j]=t;idx++;}
  if(rh>=9||r%Math.ceil(9/rh)==0){x.fillStyle='#333';x.fillText(wl[r],4,r*rh+Math.min(rh,12)-1);}}
 timeAxis(x,0,AX,nw*rh+2,h);
 hover('workers',function(px,py){var r=Math.floor(py/rh);if(r<0||r>=nw||px<L)return null;var q=(px-L)/sc;
  var S0=rowsS[r],E0=rowsE[r],lo=0,hi=S0.length-1,tol=2/sc;while(lo<hi){var m=(lo+hi+1)>>1;if(S0[m]<=q+tol)lo=m;else hi=m-1;}
  var u=wall/T.quant,head=wl[r]+' · '+fmtS(q*u);
  if(!S0.length||S0[lo]>q+tol||E0[lo]<q-tol)return head+' · idle';var k=rowsI[r]+lo;
  return head+' · task '+(lo+1)+' of this worker, '+fmtS((E0[lo]-S0[lo])*u)+((k in failed)?' · '+T.failed_outcomes[failed[k]]:'');});}
// duration histogram
var H=D.hist;if(H.counts.length){var x=canvas('hist',220);var top=Math.max.apply(null,H.counts);var n=H.counts.length;
 var lo=Math.log10(H.edges[0]),hi=Math.log10(H.edges[n]);var pw=(W-L-R);
 x.strokeStyle='#ccc';x.fillStyle='#555';x.fillText(top.toLocaleString(),4,14);x.fillText('0',4,190);
 for(var i=0;i<n;i++){var a=L+(Math.log10(H.edges[i])-lo)/(hi-lo)*pw,b=L+(Math.log10(H.edges[i+1])-lo)/(hi-lo)*pw;
  var bh=H.counts[i]/top*180;x.fillStyle='#1565c0';x.fillRect(a,190-bh,Math.max(1,b-a-1),bh);}
 x.fillStyle='#555';var mult=hi-lo<2.5?[1,2,5]:[1];
 for(var e=Math.floor(lo);e<=Math.ceil(hi);e++){for(var k=0;k<mult.length;k++){var v=Math.log10(mult[k])+e;if(v<lo||v>hi)continue;
  var px=L+(v-lo)/(hi-lo)*pw;x.fillRect(px,190,1,4);x.fillText(fmtS(Math.pow(10,v)),px-10,206);}}
 if(H.marks)for(var m in H.marks){var v=H.marks[m];if(v>0){var px=L+(Math.log10(v)-lo)/(hi-lo)*pw;x.fillStyle='#c62828';x.fillRect(px,10,1,180);x.fillText(m,px+2,20);}}}
// sampled series
var S=D.series;function line(id,keys,colors,ymax,ylab,limit){var x=canvas(id,170);var t0=0,t1=AX;var ph=130;
 x.strokeStyle='#eee';for(var q=0;q<=4;q++){var y=10+ph*q/4;x.beginPath();x.moveTo(L,y);x.lineTo(W-R,y);x.stroke();
  x.fillStyle='#555';x.fillText((+(ymax*(1-q/4)).toPrecision(3))+'',4,y+4);}
 x.fillText(ylab,4,ph+30);
 if(limit){var y=10+ph*(1-limit/ymax);x.strokeStyle='#c62828';x.setLineDash([4,3]);x.beginPath();x.moveTo(L,y);x.lineTo(W-R,y);x.stroke();x.setLineDash([]);}
 for(var k=0;k<keys.length;k++){var s=S[keys[k]];if(!s)continue;x.strokeStyle=colors[k];x.lineWidth=1.5;x.beginPath();
  for(var i=0;i<s[0].length;i++){var px=L+(s[0][i]-t0)/(t1-t0||1)*(W-L-R),py=10+ph*(1-Math.min(s[1][i],ymax)/ymax);if(i)x.lineTo(px,py);else x.moveTo(px,py);}
  x.stroke();x.lineWidth=1;}
 timeAxis(x,t0,t1,ph+12,170);}
function mx(k){var s=S[k];return s?Math.max.apply(null,s[1]):0;}
if(S.cores_busy||S.runnable){line('cpu',['cores_busy','runnable'],['#1565c0','#ef6c00'],Math.max(S.cpus,mx('runnable'),mx('cores_busy'))*1.05,'CPUs',S.cpus);}
if(S.memory){line('mem',['memory'],['#6a1b9a'],Math.max(mx('memory'),S.memory_limit||0)*1.05||1,'GiB',S.memory_limit);}
if(S.gpu_util){line('gpu',['gpu_util'],['#2e7d32'],100,'% util',null);}
if(location.hash=='#selftest'){   // tests: hover each chart once, keep what the tooltip said
 var said=[];['cores','workers'].forEach(function(id){var c=document.getElementById(id);if(!c||!c.width)return;
  var b=c.getBoundingClientRect();c.dispatchEvent(new MouseEvent('mousemove',{clientX:b.left+L+40,clientY:b.top+4}));
  said.push(id+': '+tip.textContent);});document.body.setAttribute('data-selftest',said.join(' | '));}
if(!errs.textContent){document.title='shoal report: ok';document.body.setAttribute('data-status','ok');}
}catch(e){fail('exception: '+e.message+' '+(e.stack||''));}
})();
"""


def render(run: Run, s: dict[str, Any] | None = None, sched: _analysis.Schedule | None = None) -> str:
    """The page as a string. ``s`` and ``sched``: stats(run) and
    _analysis.schedule(run), if already computed."""
    sched = _analysis.schedule(run) if sched is None else sched
    s = _stats(run, sched) if s is None else s
    edges, counts, hist_source = _analysis.duration_hist(run, sched)
    d = s["duration_s"]
    timeline = _timeline(run, sched)
    wall_s = max(sched.wall, 1) / 1e9
    cores = _cores(run)
    series = _series(run, s["cpus"])
    ends = [wall_s] + ([cores["t1"]] if cores else []) + [v[0][-1] for k, v in series.items()
                                                          if isinstance(v, list) and v and v[0]]
    data = {
        "wall": wall_s,
        "axis": max(ends),
        "timeline": timeline,
        "cores": cores,
        "hist": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
                 "marks": {k: d[k] for k in ("p50", "p99") if d.get(k)}},
        "series": series,
    }
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    e = html.escape
    findings = "".join(
        f"<li><b>{e(f['text'])}</b>" + "".join(f"<br><span class='a'>{e(a)}</span>" for a in f["advice"]) + "</li>"
        for f in s["findings"] if f["code"] != "too_little_data")
    started = run.meta.get("start_unix")
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)) if started else ""
    sub = " · ".join(x for x in (e(s["host"] or ""), e(when), e(", ".join(s["backends"]))) if x)
    cores_note = ("cores marked * are outside the job's CPU list" if run.meta.get("cpu_ids") and run.core_ids
                  and set(run.core_ids) - set(run.meta["cpu_ids"]) else "")
    tl_note = (e(timeline["why"]) + "." if timeline["mode"] == "binned"
               else f"each task drawn (times to 1/{QUANT:,} of the wall time); failed attempts in red.")
    sections = []
    if data["cores"]:
        sections.append(f"<h2>Per-core busy fraction</h2><div class='note'>sampler at "
                        f"{e(str(run.meta.get('sample_hz') or '?'))} Hz; white: idle, dark blue: busy. "
                        f"{e(cores_note)}</div><canvas id='cores'></canvas>")
    else:
        sections.append("<h2>Per-core busy fraction</h2><div class='note'>no per-core samples in this file</div>")
    sections.append(f"<h2>Per-worker timeline</h2><div class='note' id='timeline-note'>{tl_note}</div>"
                    "<canvas id='workers'></canvas>")
    sections.append(f"<h2>Task durations</h2><div class='note'>{e(hist_source)}, log scale; "
                    "red lines: p50, p99</div><canvas id='hist'></canvas>")
    if data["series"].get("cores_busy") or data["series"].get("runnable"):
        sections.append("<h2>CPU over time</h2><div class='note'><span class='legend'><span style='background:#1565c0'>"
                        "</span>cores busy<span style='background:#ef6c00'></span>runnable threads (node-wide)"
                        "<span style='background:#c62828'></span>CPUs given</span></div><canvas id='cpu'></canvas>")
    if data["series"].get("memory"):
        limit = "; dashed: the limit" if data["series"].get("memory_limit") else "; no memory limit known"
        sections.append(f"<h2>Memory over time</h2><div class='note'>cgroup memory.current, GiB{limit}"
                        "</div><canvas id='mem'></canvas>")
    if data["series"].get("gpu_util"):
        sections.append("<h2>GPU utilisation</h2><canvas id='gpu'></canvas>")
    text = _summary_text(run, color=False, s=s)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>shoal report</title><style>{_CSS}</style></head>
<body data-status="loading">
<h1>shoal monitor: {e(s['command'] or 'run')}</h1>
<div class="sub">{sub}</div>
<div class="verdict {e(s['level'])}" id="verdict">Verdict: {e(s['verdict'])}</div>
<ul class="advice">{findings}</ul>
<table class="fig">{_figures_table(s)}</table>
{''.join(sections)}
<h2>Summary</h2><pre>{e(text)}</pre>
<pre id="errors"></pre>
<div id="tip"></div>
<script type="application/json" id="shoal-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html(run: Run, path: str, s: dict[str, Any] | None = None,
               sched: _analysis.Schedule | None = None) -> str:
    """Write the page to ``path``; returns the path."""
    page = render(run, s, sched)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


__all__ = ["render", "write_html"]
