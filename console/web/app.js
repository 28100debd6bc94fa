// GeoWarn duty console: plain JavaScript, no framework, no CDN (it must work on a network
// cut off from the internet). Everything shown comes from /api with the officer's bearer
// token; live updates arrive as server-sent events read through fetch() (EventSource cannot
// send an Authorization header, and a token in the URL would end up in logs).
// All text goes in through textContent, never innerHTML: site names and notes are data.
// The server's Content-Security-Policy allows no inline script or style (console/security.py):
// no style="" attributes and no on* attributes here; colours go through element.style.
"use strict";

const LEVEL = {
  0: { colour: "none", zh: "正常", en: "Normal" },
  1: { colour: "blue", zh: "蓝色 注意级", en: "Blue · Attention" },
  2: { colour: "yellow", zh: "黄色 警示级", en: "Yellow · Caution" },
  3: { colour: "orange", zh: "橙色 警戒级", en: "Orange · Warning" },
  4: { colour: "red", zh: "红色 警报级", en: "Red · Alarm" },
};

const TEXT = {
  zh: {
    console: "值班台", offline: "未连接", live: "实时", logout: "退出", login_title: "值班员登录",
    login_help: "输入管理员发放的令牌（geowarn token create）。令牌只保存在本浏览器标签页中。", login: "登录",
    bad_token: "令牌无效或已吊销", active_warnings: "当前预警", sites: "监测点", site: "监测点", level: "等级",
    status: "状态", devices_online: "设备在线", readings_24h: "24小时读数", last_reading: "最新读数", back: "← 返回列表",
    timeline: "预警与上报时间线", charts: "监测曲线", device_health: "设备状态", device: "设备", model: "型号", online: "在线",
    battery: "电池", signal: "信号", ack_title: "确认预警", ack_hint: "确认后，本级以上的逐级上报将停止。请写明您采取的措施。",
    your_name: "您的姓名", note: "处置说明", cancel: "取消", ack_confirm: "确认并停止上报", ack: "确认预警…",
    no_warnings: "当前无预警。", raised: "发布于", ago: "前", notified: "已通知", exercise: "演练 DRILL",
    s_unacknowledged: "未确认", s_acknowledged: "已确认", s_rtn_unacknowledged: "已恢复·未确认", s_shelved: "维护挂起",
    s_normal: "正常", s_out_of_service: "停用", card: "防灾明白卡", hazard: "灾种", scale: "规模", people: "威胁人数",
    households: "户", route: "撤离路线", shelter: "避险场所", responsible: "监测责任人", phone: "电话", admin: "行政区",
    esc_running: "逐级上报进行中：未确认，{t} 将上报至上一级", esc_running_top: "未确认：已上报至最高一级",
    esc_stopped: "上报已停止：{by} 于 {t} 确认", displacement: "位移", velocity: "速率", inv_velocity: "速率倒数（1/v）",
    forecast: "预测破坏时间", rain: "降雨", per_day: "/天", none: "无", yes: "在线", no: "离线",
    clock_col: "时钟", clock_ok_cell: "正常", clock_bad: "可能有误", clock_counts: "近期: {ooo} 乱序 · {ahead} 超前 · {conflict} 冲突",
    need_name_note: "请填写姓名和处置说明", accepted: "已确认", tiers: { county: "县", city: "市", province: "省", national: "国家" },
    rules: {
      raise: "发布预警", upgrade: "预警升级", upgrade_realarm: "升级重新告警", downgrade: "预警降级", downgrade_after_hold: "保持期后降级",
      lift: "解除预警", lift_after_hold: "保持期后解除", rtn_unack: "恢复正常·待确认", ack: "已确认", ack_again: "再次确认",
      ack_stale: "确认的等级已过时", ack_rtn: "确认恢复", escalate_unacked: "未确认·逐级上报", nodata_hold: "无数据·保持等级",
      data_back: "数据恢复", report_opened: "速报任务", report_reminder: "速报提醒", report_overdue: "速报逾期", report_submitted: "速报已提交",
      shelve: "维护挂起", unshelve: "解除挂起", shelve_expired: "挂起到期", lower_held: "降级保持中", lower_cancelled: "取消降级",
    },
    kinds: { warning: "预警通知", escalation: "上报通知", realarm: "重新告警", downgrade: "降级通知", cancel: "解除通知", report_due: "速报通知", report_overdue: "速报逾期", nodata: "无数据", data_back: "数据恢复", shelved: "挂起通知", unshelved: "解除挂起", clock: "时钟异常", clock_ok: "时钟恢复" },
    deliv: { sent: "已送达", pending: "待发送", dead: "失败" },
    drill_banner: "演练进行中 DRILL：标有“演练”的预警是演练，不是真实险情。", drill_row: "演练 DRILL", drill_ack: "这是演练（DRILL）：确认只结束演练中的上报，不是真实险情。",
    original: "原文（英文）", map: "监测点分布图", map_none: "无监测点", solar: "太阳能", temp: "温度", firmware: "固件", siren: "声光报警",
    faulty: "故障传感器", command: "最近指令", cmd_succ: "设备已执行", cmd_fail: "设备执行失败", cmd_wait: "等待设备回复", cmd_none: "设备无应答（请核对设备 apikey 与在线状态）", battery_low: "电量低",
    workmode: "工作模式", workmodes: { "0": "正常", "1": "低功耗", "2": "加密" },
    siren_on: "开", siren_off: "关", time_axis: "时间",
    ack_confirm_drill: "确认演练（DRILL）并停止演练上报", title_drill: "【演练 DRILL】", next_action: "下一步",
    forecast_past: "预测时间已过 {ago}（预测破坏时间 {t}）", forecast_pending: "预测破坏时间 {t}（还有 {left}）", forecast_past_short: "预测时间已过",
    clipped: "{n} 个超出坐标范围的点画在边缘（▲▼）",
  },
  en: {
    console: "Duty console", offline: "offline", live: "live", logout: "Sign out", login_title: "Duty officer sign-in",
    login_help: "Enter the token you were given (geowarn token create). It is kept in this browser tab only.", login: "Sign in",
    bad_token: "Unknown or revoked token", active_warnings: "Active warnings", sites: "Sites", site: "Site", level: "Level",
    status: "Status", devices_online: "Devices online", readings_24h: "Readings (24 h)", last_reading: "Latest reading", back: "← Back to list",
    timeline: "Warning and escalation timeline", charts: "Monitoring charts", device_health: "Device health", device: "Device", model: "Model",
    online: "Online", battery: "Battery", signal: "Signal", ack_title: "Acknowledge warning",
    ack_hint: "Acknowledging stops the escalation to the tiers above. Say what you are doing about it.",
    your_name: "Your name", note: "Action taken", cancel: "Cancel", ack_confirm: "Acknowledge and stop escalation", ack: "Acknowledge…",
    no_warnings: "No warnings.", raised: "raised", ago: "ago", notified: "notified", exercise: "DRILL 演练",
    s_unacknowledged: "UNACKNOWLEDGED", s_acknowledged: "acknowledged", s_rtn_unacknowledged: "back to normal, unacknowledged",
    s_shelved: "shelved (maintenance)", s_normal: "normal", s_out_of_service: "out of service", card: "Disaster-prevention card (防灾明白卡)",
    hazard: "Hazard", scale: "Scale", people: "People threatened", households: "households", route: "Evacuation route", shelter: "Shelter",
    responsible: "Responsible person", phone: "Phone", admin: "County",
    esc_running: "Escalating: not acknowledged; the next tier is told at {t}", esc_running_top: "Not acknowledged: every tier has been told",
    esc_stopped: "Escalation stopped: acknowledged by {by} at {t}", displacement: "Displacement", velocity: "Velocity",
    inv_velocity: "Inverse velocity (1/v)", forecast: "forecast failure time", rain: "Rain", per_day: "/day", none: "none", yes: "online", no: "offline",
    clock_col: "Clock", clock_ok_cell: "ok", clock_bad: "may be wrong", clock_counts: "recent: {ooo} out of order · {ahead} ahead · {conflict} conflicting",
    need_name_note: "Name and action taken are both required", accepted: "Acknowledged",
    tiers: { county: "county", city: "city", province: "province", national: "national" },
    rules: {
      raise: "Warning raised", upgrade: "Level raised", upgrade_realarm: "Raised, re-alarmed", downgrade: "Level lowered", downgrade_after_hold: "Lowered after hold",
      lift: "Warning lifted", lift_after_hold: "Lifted after hold", rtn_unack: "Back to normal, unacknowledged", ack: "Acknowledged", ack_again: "Acknowledged again",
      ack_stale: "Ack of an old level", ack_rtn: "Return to normal acknowledged", escalate_unacked: "Escalated (not acknowledged)", nodata_hold: "No data, level held",
      data_back: "Data back", report_opened: "Quick report due", report_reminder: "Quick report reminder", report_overdue: "Quick report overdue", report_submitted: "Quick report submitted",
      shelve: "Shelved", unshelve: "Unshelved", shelve_expired: "Shelving expired", lower_held: "Lower level held", lower_cancelled: "Lowering cancelled",
    },
    kinds: { warning: "warning", escalation: "escalation", realarm: "re-alarm", downgrade: "downgrade", cancel: "cancel", report_due: "quick report due", report_overdue: "quick report overdue", nodata: "no data", data_back: "data back", shelved: "shelved", unshelved: "unshelved", clock: "clock wrong", clock_ok: "clock right again" },
    deliv: { sent: "sent", pending: "pending", dead: "failed" },
    drill_banner: "DRILL IN PROGRESS 演练: warnings marked DRILL are a drill, not a real hazard.", drill_row: "DRILL", drill_ack: "This is a DRILL (演练): acknowledging ends the drill's escalation; nothing real is at stake.",
    original: "original", map: "Map of sites", map_none: "no sites", solar: "Solar", temp: "Temp.", firmware: "Firmware", siren: "Siren",
    faulty: "Faulty sensors", command: "Last command", cmd_succ: "done by the device", cmd_fail: "failed on the device", cmd_wait: "awaiting the device's answer",
    cmd_none: "no answer from the device (check its apikey and link)", battery_low: "low",
    workmode: "work mode", workmodes: { "0": "normal", "1": "low power", "2": "accelerated" },
    siren_on: "on", siren_off: "off", time_axis: "Time",
    ack_confirm_drill: "Acknowledge the DRILL and stop its escalation", title_drill: "[DRILL 演练] ", next_action: "Next",
    forecast_past: "forecast time passed {ago} ago (forecast failure time {t})", forecast_pending: "forecast failure time {t} (in {left})",
    forecast_past_short: "forecast time passed", clipped: "{n} points beyond the axis drawn at its edge (▲▼)",
  },
};

const state = {
  lang: localStorage.getItem("geowarn.lang") || "zh",
  token: sessionStorage.getItem("geowarn.token") || "",
  me: null,
  warnings: [],
  sites: [],
  site: null,        // the open site page's code
  siteDoc: null,
  timelineFor: null, // the warning id whose timeline is shown
  ackTarget: null,
  abort: null,
};

// -- helpers ------------------------------------------------------------------------------

function t(key) { return TEXT[state.lang][key] ?? key; }
function fmt(key, vars) { return t(key).replace(/\{(\w+)\}/g, (_, k) => vars[k] ?? ""); }
function $(sel) { return document.querySelector(sel); }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return e;
}
const SVG = "http://www.w3.org/2000/svg";
function sv(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return e;
}
function levelName(n) { const l = LEVEL[n] || LEVEL[0]; return state.lang === "zh" ? l.zh : l.en; }
// Every time is shown in the daemon's GEOWARN_TIMEZONE (from /api/me), with the zone named:
// "2026-03-31 17:30:05 北京时间 (UTC+8)" — never the browser's own zone, unnamed.
const BEIJING = new Set(["Asia/Shanghai", "Asia/Chongqing", "Asia/Chungking", "Asia/Harbin", "PRC"]);
const UTC_NAMES = new Set(["UTC", "ETC/UTC", "ZULU", "ETC/ZULU", "UCT", "ETC/UCT"]);
function tz() { return (state.me && state.me.timezone) || "Asia/Shanghai"; }
function zoneParts(ts) {
  const f = new Intl.DateTimeFormat("en-GB", { timeZone: tz(), year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
    minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "longOffset" });
  const out = {};
  for (const part of f.formatToParts(new Date(ts * 1000))) out[part.type] = part.value;
  return out;
}
function zoneLabel(ts) {
  const zone = tz();
  if (UTC_NAMES.has(zone.toUpperCase())) return "UTC";
  // "GMT+08:00" → "UTC+8", "GMT+05:30" → "UTC+5:30", "GMT" → "UTC"
  const m = (zoneParts(ts).timeZoneName || "").match(/GMT([+-])(\d\d):(\d\d)/);
  const off = m ? `UTC${m[1]}${Number(m[2])}${m[3] !== "00" ? ":" + m[3] : ""}` : "UTC";
  if (BEIJING.has(zone)) return state.lang === "zh" ? `北京时间 (${off})` : `Beijing time (${off})`;
  return `${zone} (${off})`;
}
function clock(ts) {
  if (ts === null || ts === undefined) return "–";
  const p = zoneParts(ts);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${zoneLabel(ts)}`;
}
function unitName(code) { return (state.me && state.me.units && state.me.units[code]) || code; }
// A Chinese lead with the English original kept one click away: "…。（原文：…）" from the API.
function reasonNode(zh, en, cls) {
  if (state.lang !== "zh" || !zh) return el("div", { class: cls, text: en });
  const i = zh.indexOf("（原文：");
  const lead = i >= 0 ? zh.slice(0, i) : zh;
  return el("div", { class: cls, lang: "zh-CN" }, el("span", { class: "lead", text: lead }),
    en ? el("details", { class: "original" }, el("summary", { text: t("original") }), el("span", { lang: "en", text: en })) : null);
}
function ago(ts) {
  if (!ts) return "–";
  return duration(Date.now() / 1000 - ts);
}
function duration(seconds) {
  let s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60); s %= 60;
  const zh = state.lang === "zh";
  if (h >= 48) return zh ? `${Math.floor(h / 24)} 天` : `${Math.floor(h / 24)} d`;
  if (h > 0) return zh ? `${h} 小时 ${m} 分` : `${h} h ${m} min`;
  if (m > 0) return zh ? `${m} 分 ${s} 秒` : `${m} min ${s} s`;
  return zh ? `${s} 秒` : `${s} s`;
}
// A forecast failure time: pending with a countdown, or marked as passed, never shown as if
// still to come (the seconds tick with the page's clock; see the interval at the bottom).
function forecastText(ft) {
  const now = Date.now() / 1000;
  return ft <= now ? fmt("forecast_past", { ago: duration(now - ft), t: clock(ft) }) : fmt("forecast_pending", { t: clock(ft), left: duration(ft - now) });
}
function forecastNode(w) {
  if (!w.forecast || !w.forecast.failure_time) return null;
  const ft = Number(w.forecast.failure_time);
  return el("p", { class: "forecast-line", "data-forecast-t": ft, "data-forecast": ft <= Date.now() / 1000 ? "past" : "pending", text: forecastText(ft) });
}
function tickForecasts() {
  for (const e of document.querySelectorAll("[data-forecast-t]")) {
    const ft = Number(e.dataset.forecastT);
    e.dataset.forecast = ft <= Date.now() / 1000 ? "past" : "pending";
    e.textContent = forecastText(ft);
  }
}
// The next action in one sentence, from the API (the level's "what to do now" of the
// notifications and the site's 防灾明白卡): the first thing a warning says.
function nextActionNode(w) {
  const na = w.next_action && (w.next_action[state.lang] || w.next_action.en);
  if (!na) return null;
  return el("p", { class: w.exercise ? "next-action drill" : "next-action", "data-status": w.status, "data-level": w.level },
    el("b", { text: `${t("next_action")}: ` }), na);
}
function statusBadge(status) { return el("span", { class: "badge status", "data-status": status, text: t("s_" + status) }); }
function levelBadge(n) { return el("span", { class: `badge lvl-${n}`, text: levelName(n) }); }

async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" } });
  if (res.status === 401) { signOut(t("bad_token")); throw new Error("401"); }
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
  if (!res.ok && res.status !== 409 && res.status !== 202) throw new Error(typeof body === "object" ? (body.detail?.[0]?.msg || body.detail || res.statusText) : body);
  return { status: res.status, body };
}

// -- language -----------------------------------------------------------------------------

function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  $("#lang").textContent = state.lang === "zh" ? "EN" : "中文";
  $("#live .txt").textContent = t($("#live").dataset.state);
  // data-i18n just reset the ack button: a drill's dialog keeps saying DRILL in either language.
  if (state.ackTarget && $("#ack-dialog").open) openAckTexts(state.ackTarget);
  render();
}

// -- sign-in ------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  try {
    const { body } = await api("/api/me");
    state.me = body;
  } catch (e) {
    return;
  }
  sessionStorage.setItem("geowarn.token", token);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = `${state.me.name} · ${state.me.admin_name || state.me.admin}`;
  $("#who").title = `${t("tiers")[state.me.tier]} ${state.me.admin}`;
  await refreshLists();
  route();
  liveLoop();
}

function signOut(message) {
  state.token = "";
  sessionStorage.removeItem("geowarn.token");
  if (state.abort) state.abort.abort();
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  setLive("offline");
}

// -- live updates -------------------------------------------------------------------------

function setLive(s) {
  const e = $("#live");
  e.dataset.state = s;
  e.querySelector(".txt").textContent = t(s);
}

async function liveLoop() {
  const token = state.token;
  while (state.token && state.token === token) {
    state.abort = new AbortController();
    try {
      const res = await fetch("/api/events", { headers: { Authorization: `Bearer ${token}` }, signal: state.abort.signal });
      if (res.status === 401) { signOut(t("bad_token")); return; }
      if (!res.ok) throw new Error(res.statusText);
      setLive("live");
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          onEvent(block);
        }
      }
    } catch (e) {
      if (!state.token) return;
    }
    setLive("offline");
    // Reconnect after a pause: the server may be restarting.
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function onEvent(block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (event !== "update" || !data) return;
  const doc = JSON.parse(data);
  state.warnings = doc.warnings;
  for (const s of state.sites) if (doc.levels[s.site] !== undefined) s.level = doc.levels[s.site];
  render();
  if (state.site) loadSite(state.site);
  else refreshSites();
}

// -- lists --------------------------------------------------------------------------------

async function refreshLists() {
  const [w, s] = await Promise.all([api("/api/warnings"), api("/api/sites")]);
  state.warnings = w.body;
  state.sites = s.body;
  render();
}
async function refreshSites() {
  state.sites = (await api("/api/sites")).body;
  renderSites();
}

function render() {
  if (!state.me) return;
  renderWarnings();
  renderSites();
  if (state.site && state.siteDoc) renderSite();
}

function warningCard(w) {
  const next = w.status === "unacknowledged" && w.ack_deadline ? ` · ${fmt("esc_running", { t: clock(w.ack_deadline) })}` : "";
  const tiers = [...new Set(w.notified.map((n) => unitName(n.admin)))].join(", ");
  return el("div", { class: w.exercise ? "warning drill" : "warning", "data-id": w.id, "data-site": w.site, "data-status": w.status, "data-level": w.level,
                     "data-active": String(w.active), "data-exercise": String(!!w.exercise),
                     onclick: () => { location.hash = `#/site/${encodeURIComponent(w.site)}`; } },
    el("div", { class: w.exercise ? `bar lvl-${w.level} drill-hatch` : `bar lvl-${w.level}` }),
    el("div", { class: "main" },
      el("div", { class: "title" }, w.exercise ? el("span", { class: "badge exercise", text: t("exercise") }) : null, w.exercise ? " " : null,
        levelBadge(w.level), " ", w.site_name),
      w.active ? nextActionNode(w) : null,
      el("div", { class: "meta", text: `${w.site} · ${w.admin_name || w.admin} · ${t("raised")} ${clock(w.since)} · ${t("notified")}: ${tiers || t("none")}${next}` }),
      reasonNode(w.reason_zh, w.reason, "reason"), forecastNode(w)),
    el("div", { class: "side" }, statusBadge(w.status), el("span", { class: "since", "data-since": w.since, text: ago(w.since) }),
      w.active && w.status === "unacknowledged" ? el("button", { type: "button", class: "danger ack-btn", text: t("ack"),
        onclick: (ev) => { ev.stopPropagation(); openAck(w); } }) : null));
}

// While any drill is active the whole page says so, on every view.
function renderDrillBanner() {
  const drills = state.warnings.filter((w) => w.exercise && w.active);
  const banner = $("#drill-banner");
  banner.hidden = drills.length === 0;
  banner.textContent = drills.length ? `${t("drill_banner")} (${drills.map((w) => w.site_name).join(", ")})` : "";
  // The tab's title too: a drill tab in the background must not read as a real alarm.
  const siteDrill = state.site && state.siteDoc && state.siteDoc.warnings.some((w) => w.exercise && w.active);
  document.title = drills.length || siteDrill ? `${t("title_drill")}${BASE_TITLE}` : BASE_TITLE;
  document.body.classList.toggle("drill-on", !!(drills.length || siteDrill));
}
const BASE_TITLE = "GeoWarn 值班台 · Duty console";

function renderWarnings() {
  renderDrillBanner();
  const box = $("#warnings");
  const active = state.warnings.filter((w) => w.active);
  $("#count").textContent = `(${active.length})`;
  box.replaceChildren(...(state.warnings.length ? state.warnings.map(warningCard) : [el("div", { class: "empty", text: t("no_warnings") })]));
}

function renderSites() {
  const rows = state.sites.map((s) => el("tr", { class: s.drill_level ? "link drill" : "link", "data-site": s.site, "data-drill": s.drill_level ? String(s.drill_level) : null,
    onclick: () => { location.hash = `#/site/${encodeURIComponent(s.site)}`; } },
    el("td", {}, el("b", { text: s.site }), " ", s.name, el("div", { class: "unit", text: s.admin_name || s.admin })),
    el("td", {}, levelBadge(s.level), s.drill_level ? [" ", el("span", { class: "badge exercise", text: `${t("drill_row")} ${levelName(s.drill_level)}` })] : null),
    el("td", {}, statusBadge(s.status)),
    el("td", { text: `${s.devices_online} / ${s.devices}` }), el("td", { text: s.readings_24h }), el("td", { text: s.last_t ? clock(s.last_t) : "–" })));
  $("#sites tbody").replaceChildren(...rows);
  renderMap();
}

// -- the map: the sites projected from their lat/lon, coloured by level (inline SVG, nothing
// fetched; tiles are drawn under them only when the daemon names a tile server) ----------

function mercator(lat, lon, z) {
  const n = 2 ** z, r = (Math.max(-85, Math.min(85, lat)) * Math.PI) / 180;
  return [((lon + 180) / 360) * n, ((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n];
}

function renderMap() {
  const box = $("#map");
  const sites = state.sites.filter((s) => Number.isFinite(s.lat) && Number.isFinite(s.lon));
  if (!sites.length) { box.replaceChildren(el("div", { class: "empty", text: t("map_none") })); return; }
  const W = 640, H = 300, M = 40;
  // The zoom at which the sites' extent fills the frame (in tile units), capped for one site.
  let z = 14;
  const ext = (zz) => { const pts = sites.map((s) => mercator(s.lat, s.lon, zz)); const xs = pts.map((q) => q[0]), ys = pts.map((q) => q[1]);
    return { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) }; };
  while (z > 1) { const e = ext(z); if ((e.x1 - e.x0) * 256 <= W - 2 * M && (e.y1 - e.y0) * 256 <= H - 2 * M) break; z--; }
  const e = ext(z), cx = (e.x0 + e.x1) / 2, cy = (e.y0 + e.y1) / 2;
  const P = (lat, lon) => { const [x, y] = mercator(lat, lon, z); return [W / 2 + (x - cx) * 256, H / 2 + (y - cy) * 256]; };
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("map"), "data-zoom": z });
  svg.append(sv("rect", { class: "map-bg", x: 0, y: 0, width: W, height: H }));
  const tiles = state.me && state.me.map_tile_url;
  if (tiles) {
    const tx0 = Math.floor(cx - W / 512), tx1 = Math.floor(cx + W / 512), ty0 = Math.floor(cy - H / 512), ty1 = Math.floor(cy + H / 512);
    for (let x = tx0; x <= tx1; x++) for (let y = ty0; y <= ty1; y++) {
      if (y < 0 || y >= 2 ** z) continue;
      const href = tiles.replace("{z}", z).replace("{x}", ((x % 2 ** z) + 2 ** z) % 2 ** z).replace("{y}", y);
      svg.append(sv("image", { href, x: W / 2 + (x - cx) * 256, y: H / 2 + (y - cy) * 256, width: 256, height: 256 }));
    }
  }
  // A graticule every 0.1° (or coarser when zoomed out) so distances can be read.
  const step = z >= 10 ? 0.1 : z >= 7 ? 1 : 5;
  const [lat0, lon0] = [Math.min(...sites.map((s) => s.lat)), Math.min(...sites.map((s) => s.lon))];
  for (let k = -6; k <= 6; k++) {
    const lo = Math.round(lon0 / step) * step + k * step, la = Math.round(lat0 / step) * step + k * step;
    const [gx] = P(lat0, lo), [, gy] = P(la, lon0);
    svg.append(sv("line", { class: "grid", x1: gx, y1: 0, x2: gx, y2: H }), sv("line", { class: "grid", x1: 0, y1: gy, x2: W, y2: gy }));
    svg.append(sv("text", { class: "tick", x: gx + 2, y: H - 4 }, `${lo.toFixed(1)}°E`), sv("text", { class: "tick", x: 2, y: gy - 2 }, `${la.toFixed(1)}°N`));
  }
  for (const s of [...sites].sort((a, b) => a.level - b.level)) {
    const [x, y] = P(s.lat, s.lon);
    const g = sv("g", { class: `map-site lvl-${s.level}`, "data-site": s.site, "data-level": s.level, "data-colour": s.colour, "data-drill": s.drill_level || null },
      sv("title", {}, `${s.name} · ${levelName(s.level)}${s.drill_level ? ` · ${t("drill_row")} ${levelName(s.drill_level)}` : ""}`),
      sv("circle", { class: "dot", cx: x.toFixed(1), cy: y.toFixed(1), r: s.level ? 10 : 7 }),
      sv("text", { class: "label", x: (x + 13).toFixed(1), y: (y + 4).toFixed(1) }, s.name));
    if (s.drill_level) g.append(sv("circle", { class: "drill-ring", cx: x.toFixed(1), cy: y.toFixed(1), r: 15 }));
    g.addEventListener("click", () => { location.hash = `#/site/${encodeURIComponent(s.site)}`; });
    svg.append(g);
  }
  box.replaceChildren(svg);
}

// -- the site page ------------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/site\/(.+)$/);
  state.site = m ? decodeURIComponent(m[1]) : null;
  $("#view-list").hidden = !!state.site;
  $("#view-site").hidden = !state.site;
  if (state.site) { state.siteDoc = null; loadSite(state.site, true); }
  else refreshLists();
}

let loading = null;
async function loadSite(site, withCharts = false) {
  // Coalesce bursts of live updates into one reload at a time.
  if (loading) { loading.again = true; loading.charts ||= withCharts; return; }
  loading = { again: false, charts: withCharts };
  try {
    do {
      const charts = loading.charts;
      loading.again = false; loading.charts = false;
      const { body } = await api(`/api/sites/${encodeURIComponent(site)}`);
      if (state.site !== site) return;
      state.siteDoc = body;
      const w = body.warnings.find((x) => x.active) || body.warnings[0];
      state.timeline = w ? (await api(`/api/warnings/${encodeURIComponent(w.id)}/timeline`)).body : null;
      renderSite();
      if (charts || !state.chartsDrawn) { await drawCharts(site, body.card, w); state.chartsDrawn = true; }
    } while (loading.again);
  } finally {
    loading = null;
  }
}

function renderSite() {
  const d = state.siteDoc;
  if (!d) return;
  const c = d.card;
  $("#site-title").replaceChildren(levelBadge(Math.max(d.level, ...d.warnings.filter((w) => w.active).map((w) => w.level), 0)), " ", c.name, " ", el("small", { text: c.site }));
  const w = d.warnings.find((x) => x.active) || d.warnings[0];
  const wbox = $("#site-warning");
  if (!w) wbox.replaceChildren(el("div", { class: "empty", text: t("no_warnings") }));
  else {
    wbox.replaceChildren(el("div", { class: w.exercise ? "panel warning-panel drill" : "panel warning-panel", "data-id": w.id, "data-status": w.status, "data-exercise": String(!!w.exercise) },
      w.exercise ? el("div", { class: "drill-note", text: t("drill_banner") }) : null,
      w.active ? nextActionNode(w) : null,
      el("div", { class: "head" }, levelBadge(w.level), statusBadge(w.status), w.exercise ? el("span", { class: "badge exercise", text: t("exercise") }) : null,
        el("span", { class: "title", text: `${t("raised")} ${clock(w.since)}` }), el("span", { class: "since", "data-since": w.since, text: ago(w.since) }),
        el("span", { class: "spacer" }),
        w.active && w.status === "unacknowledged" ? el("button", { id: "ack-open", type: "button", text: t("ack"), onclick: () => openAck(w) }) : null),
      reasonNode(w.reason_zh, w.reason, "reason"),
      forecastNode(w)));
  }
  renderDrillBanner();
  renderTimeline(w);
  // 防灾明白卡
  $("#card").replaceChildren(el("h3", { text: t("card") }), el("dl", {},
    el("dt", { text: t("people") }), el("dd", {}, el("span", { class: "people", text: c.threatened_people }), ` · ${c.threatened_households} ${t("households")}`),
    el("dt", { text: t("route") }), el("dd", { text: c.evacuation_route || "–" }),
    el("dt", { text: t("shelter") }), el("dd", { text: c.shelter || "–" }),
    el("dt", { text: t("responsible") }), el("dd", { text: c.responsible || "–" }),
    el("dt", { text: t("phone") }), el("dd", {}, c.phone ? el("a", { href: `tel:${c.phone.replace(/\s/g, "")}`, text: c.phone }) : "–"),
    el("dt", { text: t("hazard") }), el("dd", { text: `${c.hazard} · ${c.scale}` }),
    el("dt", { text: t("admin") }), el("dd", { class: "unit", title: c.admin, text: `${c.admin_name || c.admin} · ${c.lat.toFixed(4)}, ${c.lon.toFixed(4)}` })));
  // Device health
  $("#devices tbody").replaceChildren(...d.devices.map((dev) => el("tr", { "data-device": dev.device },
    el("td", { text: dev.device }), el("td", { text: dev.model }),
    el("td", { class: dev.online ? "ok" : "bad", text: dev.online ? t("yes") : t("no") }),
    el("td", { text: dev.last_t ? `${clock(dev.last_t)}` : "–" }),
    el("td", { "data-health": "battery", "data-low": dev.battery_low ? "yes" : "no", class: dev.battery_low ? "bad" : null,
      title: dev.battery_low_at ? `< ${dev.battery_low_at.percent} % / ${dev.battery_low_at.v} V` : null,
      text: dev.battery_low ? `${battery(dev.health)} · ${t("battery_low")}` : battery(dev.health) }),
    el("td", { "data-health": "signal", text: signal(dev.health) }),
    clockCell(dev.clock),
    el("td", { "data-health": "solar", text: dev.health && dev.health.solar_v !== undefined ? `${dev.health.solar_v} V` : "–" }),
    el("td", { "data-health": "temp", text: dev.health && dev.health.temp_c !== undefined ? `${dev.health.temp_c} °C` : "–" }),
    el("td", { "data-health": "fw", text: dev.health && dev.health.fw !== undefined ? String(dev.health.fw) : "–" }),
    el("td", { "data-health": "siren", text: siren(dev.health) }),
    el("td", { "data-health": "faulty", class: dev.health && dev.health.faulty_sensors && dev.health.faulty_sensors.length ? "bad" : null,
      text: dev.health && dev.health.faulty_sensors && dev.health.faulty_sensors.length ? dev.health.faulty_sensors.join(", ") : "–" }),
    commandCell(dev))));
}

function battery(h) {
  if (!h) return "–";
  const parts = [];
  if (h.battery_v !== undefined) parts.push(`${h.battery_v} V`);
  if (h.battery_percent !== undefined) parts.push(`${h.battery_percent} %`);
  return parts.join(" · ") || "–";
}
function signal(h) {
  if (!h) return "–";
  const parts = [];
  if (h.signal_dbm !== undefined) parts.push(`${h.signal_dbm} dBm`);
  for (const k of ["signal_4g", "signal_nb", "signal_bd"]) if (h[k] !== undefined) parts.push(`${k.slice(7).toUpperCase()} ${h[k]}`);
  return parts.join(" · ") || "–";
}
function siren(h) {
  if (!h || h.siren_state === undefined || h.siren_state === null) return "–";
  const v = h.siren_state;
  return v === 0 || v === "0" || v === false ? t("siren_off") : v === 1 || v === "1" || v === true ? t("siren_on") : String(v);
}
// The device's latest sampling commands, one line per sensor (a convention device's
// setsensortime is per sensor: one sensor's failure must not hide behind another's success) and
// its work mode, each with its answer: succ, fail, waiting, or none after the answer window.
function commandCell(dev) {
  const cmds = dev.commands || (dev.last_command ? [dev.last_command] : []);
  if (!cmds.length) return el("td", { "data-health": "command", text: "–" });
  const bad = cmds.some((c) => c.answer === "fail" || c.answer === "none");
  const good = cmds.every((c) => c.answer === "succ");
  return el("td", { "data-health": "command", "data-result": bad ? "fail" : good ? "succ" : "", class: bad ? "bad" : good ? "ok" : null },
    ...cmds.map((c) => {
      const what = c.cmd === "setsensortime" ? `${c.sensor_id || ""} ${c.interval_s ?? ""} s`
        : c.cmd === "setworkmode" ? `${t("workmode")} ${(t("workmodes") || {})[c.mode] || c.mode || ""}` : `${c.cmd} ${c.interval_s ?? ""} s`;
      const answer = c.answer === "succ" ? t("cmd_succ") : c.answer === "fail" ? t("cmd_fail") : c.answer === "none" ? t("cmd_none")
        : c.answer === "waiting" ? t("cmd_wait") : t("deliv")[c.delivery] || c.delivery;
      return el("div", { class: c.answer === "fail" || c.answer === "none" ? "cmd bad" : c.answer === "succ" ? "cmd ok" : "cmd",
        "data-sensor": c.sensor_id || (c.cmd === "setworkmode" ? "workmode" : ""), "data-answer": c.answer || "", title: `${c.cmd} · ${clock(c.t)}`,
        text: `${what} · ${answer}` });
    }));
}

// A device's clock: ok, or "may be wrong" with its recent readings out of order / ahead of
// their arrival / conflicting (detection's clock health; see /api/clock).
function clockCell(c) {
  if (!c) return el("td", { class: "ok", "data-clock": "ok", text: t("clock_ok_cell") });
  const r = c.recent || {};
  const counts = fmt("clock_counts", { ooo: r.out_of_order || 0, ahead: r.ahead || 0, conflict: r.conflict || 0 });
  return el("td", { class: c.trouble ? "bad" : "ok", "data-clock": c.trouble ? "trouble" : "ok", title: counts,
    text: c.trouble ? `${t("clock_bad")} (${counts})` : t("clock_ok_cell") });
}

function renderTimeline(w) {
  const tl = state.timeline;
  const esc = $("#esc-state");
  if (!w || !tl) { esc.dataset.state = "none"; $("#timeline").replaceChildren(); return; }
  const lastAck = w.acks.length ? w.acks[w.acks.length - 1] : null;
  if (w.active && w.status === "acknowledged" && lastAck) { esc.dataset.state = "stopped"; esc.textContent = fmt("esc_stopped", { by: lastAck.by, t: clock(lastAck.t) }); }
  else if (w.active && w.status === "unacknowledged") { esc.dataset.state = "running"; esc.textContent = w.ack_deadline ? fmt("esc_running", { t: clock(w.ack_deadline) }) : t("esc_running_top"); }
  else { esc.dataset.state = "none"; esc.textContent = ""; }
  const items = [];
  for (const h of tl.history) {
    items.push({ t: h.t, node: el("li", { class: w.exercise ? "tl-entry drill" : "tl-entry", "data-rule": h.rule },
      el("span", { class: "when", text: clock(h.t) }), w.exercise ? el("span", { class: "badge exercise", text: t("exercise") }) : null, " ",
      el("span", { class: "what", text: t("rules")[h.rule] || h.rule }), " ", levelBadge(h.level),
      reasonNode(h.detail_zh !== h.detail ? h.detail_zh : null, h.detail, "detail")) });
  }
  for (const n of tl.notifications) {
    items.push({ t: n.t + 0.001, node: el("li", { class: w.exercise ? "tl-note drill" : "tl-note", "data-kind": n.kind, "data-admin": n.admin },
      el("span", { class: "when", text: clock(n.t) }), w.exercise ? el("span", { class: "badge exercise", text: t("exercise") }) : null,
      el("span", { text: ` → ${n.admin_name || unitName(n.admin)}: ${t("kinds")[n.kind] || n.kind}` }),
      el("span", { class: "deliv" }, ...n.deliveries.map((dl) => el("span", { class: dl.state, title: dl.last_error || "", text: ` ${dl.notifier.split("/").slice(1).join("/")}:${t("deliv")[dl.state] || dl.state}` })))) });
  }
  items.sort((a, b) => b.t - a.t);
  $("#timeline").replaceChildren(...items.map((i) => i.node));
}

// -- acknowledgement: one deliberate action -----------------------------------------------

function openAckTexts(w) {
  const dialog = $("#ack-dialog");
  dialog.dataset.exercise = String(!!w.exercise);
  $("#ack-title").textContent = w.exercise ? `${t("exercise")} · ${t("ack_title")}` : t("ack_title");
  $("#ack-drill").hidden = !w.exercise;
  $("#ack-drill").textContent = w.exercise ? t("drill_ack") : "";
  $("#ack-confirm").textContent = w.exercise ? t("ack_confirm_drill") : t("ack_confirm");
  $("#ack-summary").replaceChildren(levelBadge(w.level), w.exercise ? [" ", el("span", { class: "badge exercise", text: t("exercise") })] : null,
    ` ${w.site_name} · ${w.admin_name || w.admin} · ${t("raised")} ${clock(w.since)}`);
}

function openAck(w) {
  state.ackTarget = w;
  openAckTexts(w);
  $("#ack-error").textContent = "";
  $("#ack-confirm").disabled = false;
  $("#ack-name").value = localStorage.getItem("geowarn.name") || "";
  $("#ack-note").value = "";
  $("#ack-dialog").showModal();
  ($("#ack-name").value ? $("#ack-note") : $("#ack-name")).focus();
}

async function submitAck(ev) {
  ev.preventDefault();
  const w = state.ackTarget;
  const name = $("#ack-name").value.trim(), note = $("#ack-note").value.trim();
  if (!w) return;
  if (!name || !note) { $("#ack-error").textContent = t("need_name_note"); return; }
  $("#ack-confirm").disabled = true;
  try {
    const { status, body } = await api(`/api/warnings/${encodeURIComponent(w.id)}/ack`, { method: "POST", body: JSON.stringify({ name, note }) });
    if (status === 200) {
      localStorage.setItem("geowarn.name", name);
      $("#ack-dialog").close();
      if (state.site) loadSite(state.site); else refreshLists();
    } else {
      $("#ack-error").textContent = body.detail || String(status);
      $("#ack-confirm").disabled = false;
    }
  } catch (e) {
    $("#ack-error").textContent = e.message;
    $("#ack-confirm").disabled = false;
  }
}

// -- charts (inline SVG) ------------------------------------------------------------------

const PALETTE = ["#79c0ff", "#d2a8ff", "#7ee787", "#ffa657", "#ff7b72", "#e3b341", "#a5d6ff"];
const DISP = ["displacement", "crack", "gnss_e", "gnss_n", "gnss_u", "tilt", "deep_displacement"];

// Velocity per day: least-squares slope over the site's velocity window ending at each point,
// as the detectors smooth it (a raw difference of two noisy GNSS readings means nothing), with
// its standard error: [t, v, se].
function velocity(points, windowS) {
  const out = [];
  let j = 0;
  for (let i = 0; i < points.length; i++) {
    const t1 = points[i][0];
    while (points[j][0] < t1 - windowS) j++;
    const n = i - j + 1;
    if (n < 3 || t1 - points[j][0] < windowS * 0.5) continue;
    let st = 0, sv_ = 0, stt = 0, stv = 0;
    for (let k = j; k <= i; k++) { const x = (points[k][0] - t1) / 86400; st += x; sv_ += points[k][1]; stt += x * x; stv += x * points[k][1]; }
    const den = n * stt - st * st;
    if (!(den > 0)) continue;
    const b = (n * stv - st * sv_) / den, a = (sv_ - b * st) / n;
    // The slope's standard error from the window's residuals: says whether it is movement or noise.
    let rss = 0;
    for (let k = j; k <= i; k++) { const r = points[k][1] - a - b * (points[k][0] - t1) / 86400; rss += r * r; }
    const se = n > 2 ? Math.sqrt(rss / (n - 2) / (stt - (st * st) / n)) : Infinity;
    out.push([t1, b, se]);
  }
  return out;
}

// -- robust axes: one spike or a noisy 1/v must not make a chart unreadable -------------------

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = (sorted.length - 1) * q, lo = Math.floor(i), hi = Math.ceil(i);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (i - lo);
}
function median(xs) { return quantile([...xs].sort((a, b) => a - b), 0.5); }

// Isolated spikes of a series (a Hampel filter): a point further than 6 scaled MADs from the
// median of its 11 neighbours. A slope that accelerates moves its neighbours with it and is
// not a spike; one reading of 190 000 mm among readings of 5 mm is.
function spikes(points) {
  const n = points.length, out = new Array(n).fill(false), K = 5;
  if (n < 5) return out;
  const ys = points.map((p) => p[1]);
  const diffs = ys.slice(1).map((y, i) => Math.abs(y - ys[i]));
  const floor = Math.max(1.4826 * median(diffs), 1e-9 * (Math.abs(median(ys)) + 1));
  for (let i = 0; i < n; i++) {
    const w = ys.slice(Math.max(0, i - K), Math.min(n, i + K + 1));
    const m = median(w), mad = 1.4826 * median(w.map((y) => Math.abs(y - m)));
    if (Math.abs(ys[i] - m) > 6 * Math.max(mad, floor)) out[i] = true;
  }
  return out;
}

// The y range of a chart: every point but its series' isolated spikes (a spike within one span
// of the rest is kept; rain, spiky by nature, keeps all), above yMin (rain, 1/v: the axis starts at 0); with ``fence`` (1/v)
// also no higher than the upper quartile plus 3 interquartile ranges: a large 1/v only says
// "hardly moving", and GNSS noise around zero velocity makes thousands of those.
function robustRange(series, opts = {}) {
  const kept = [], spiky = [];
  for (const s of series) {
    const sp = opts.spikes === false ? s.points.map(() => false) : spikes(s.points);
    s.points.forEach((p, i) => (sp[i] ? spiky : kept).push(p[1]));
  }
  if (!kept.length) kept.push(...spiky.splice(0));
  let y0 = Math.min(...kept), y1 = Math.max(...kept);
  const span = Math.max(y1 - y0, Math.abs(y1) * 0.1, 1e-9);
  for (const v of spiky) { if (v >= y0 - span && v < y0) y0 = v; if (v <= y1 + span && v > y1) y1 = v; }
  if (opts.fence) {
    const sorted = [...kept].sort((a, b) => a - b);
    const q1 = quantile(sorted, 0.25), q3 = quantile(sorted, 0.75);
    y1 = Math.min(y1, q3 + 3 * Math.max(q3 - q1, Math.abs(q3) * 0.05));
  }
  // A steady series (a constant velocity) would otherwise fill the chart with its rounding
  // noise: show at least ±5 % of its magnitude.
  const mag = Math.max(Math.abs(y0), Math.abs(y1));
  if (y1 - y0 < mag * 0.1 || y1 === y0) { const mid = (y0 + y1) / 2, half = Math.max(mag * 0.05, 0.5); y0 = mid - half; y1 = mid + half; }
  const pad = (y1 - y0) * 0.06; y1 += pad; y0 -= pad;
  if (opts.yMin !== undefined) { y0 = opts.yMin; if (y1 <= y0) y1 = y0 + 1; }
  return { y0, y1 };
}

// What the charts drew, for a reader of the page's state (and its tests): per chart its axis
// and how many points lay beyond it.
state.charts = {};

function lineChart(title, series, opts = {}) {
  const W = 640, H = 230, L = 58, R = 12, T = 10, B = 28;
  const all = series.flatMap((s) => s.points);
  const box = el("div", { class: "chart", "data-chart": opts.id || title }, el("h3", {}, title, el("small", { class: "zone", text: ` · ${t("time_axis")}: ${zoneLabel(Date.now() / 1000)}` })));
  if (!all.length) { box.append(el("div", { class: "legend", text: t("none") })); return box; }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  for (const m of opts.markers || []) { x0 = Math.min(x0, m.t); x1 = Math.max(x1, m.t); }
  const { y0, y1 } = robustRange(series, opts);
  if (x1 === x0) x1 += 1;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (Math.min(y1, Math.max(y0, y)) - y0) / (y1 - y0)) * (H - T - B);
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.append(sv("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }), sv("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + ((y1 - y0) * i) / 4, xv = x0 + ((x1 - x0) * i) / 4;
    svg.append(sv("text", { class: "tick", x: L - 6, y: Y(yv) + 4, "text-anchor": "end" }, Math.abs(yv) >= 100 ? yv.toFixed(0) : yv.toPrecision(3)));
    svg.append(sv("line", { class: "axis", x1: L, y1: Y(yv), x2: W - R, y2: Y(yv), "stroke-opacity": 0.35 }));
    const d = zoneParts(xv);
    svg.append(sv("text", { class: "tick", x: X(xv), y: H - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
      `${Number(d.month)}-${Number(d.day)} ${d.hour}:${d.minute}`));
  }
  let clipped = 0;
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const colour = s.colour || PALETTE[i % PALETTE.length];
    // The line runs through the points within the axis, broken where one lies beyond it and
    // across a gap (no data, or 1/v left out where the velocity was only noise).
    const step = median(s.points.slice(1).map((p, k) => p[0] - s.points[k][0])) || Infinity;
    const runs = [[]];
    let prev = null;
    for (const p of s.points) {
      const run = runs[runs.length - 1];
      if (prev && p[0] - prev[0] > 3 * step && run.length) runs.push([]);
      prev = p;
      if (p[1] >= y0 && p[1] <= y1) runs[runs.length - 1].push(p);
      else if (runs[runs.length - 1].length) runs.push([]);
    }
    for (const run of runs) {
      if (run.length === 1) svg.append(sv("circle", { class: "lone", fill: colour, cx: X(run[0][0]).toFixed(1), cy: Y(run[0][1]).toFixed(1), r: 1.8 }));
      else if (run.length) svg.append(sv("polyline", { fill: "none", stroke: colour, "stroke-width": 1.6,
        points: run.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") }));
    }
    // A point beyond the axis is drawn at its edge as a triangle pointing out, its value in
    // its tooltip: clipped, never silently dropped.
    for (const p of s.points) {
      if (p[1] >= y0 && p[1] <= y1) continue;
      clipped++;
      if (clipped > 200) continue;
      const x = X(p[0]), up = p[1] > y1, y = up ? T : H - B;
      svg.append(sv("polygon", { class: "clipped", fill: colour, "data-value": p[1],
        points: up ? `${x - 4},${y + 7} ${x + 4},${y + 7} ${x},${y}` : `${x - 4},${y - 7} ${x + 4},${y - 7} ${x},${y}` },
        sv("title", {}, `${s.name}: ${p[1].toPrecision(4)} · ${clock(p[0])}`)));
    }
  });
  for (const m of opts.markers || []) {
    svg.append(sv("line", { class: m.past ? "forecast past" : "forecast", x1: X(m.t), y1: T, x2: X(m.t), y2: H - B }));
    svg.append(sv("text", { class: "tick", x: X(m.t) - 4, y: T + 12, "text-anchor": "end", fill: "#ff7b72" }, m.label));
    if (m.from) svg.append(sv("line", { class: "forecast", x1: X(m.from[0]), y1: Y(m.from[1]), x2: X(m.t), y2: Y(0) }));
  }
  state.charts[opts.id || title] = { y0, y1, clipped, points: all.length };
  box.dataset.y0 = String(y0);
  box.dataset.y1 = String(y1);
  box.dataset.clipped = String(clipped);
  // The colour through the CSSOM, not a style attribute: the page's CSP allows no inline style.
  box.append(svg, el("div", { class: "legend" }, ...series.map((s, i) => {
    const key = el("span", { text: `■ ${s.name}  ` });
    key.style.color = s.colour || PALETTE[i % PALETTE.length];
    return key;
  }), clipped ? el("span", { class: "clipped-note", text: fmt("clipped", { n: clipped }) }) : null));
  return box;
}

async function drawCharts(site, card, w) {
  const { body } = await api(`/api/sites/${encodeURIComponent(site)}/series?hours=72`);
  if (state.site !== site) return;
  const disp = body.channels.filter((c) => DISP.includes(c.kind));
  const rain = body.channels.filter((c) => c.kind === "rain");
  const win = card.velocity_window_s || 21600;
  // Velocity from the displacement without its isolated spikes: one bad reading would
  // otherwise make a window's worth of velocities (and their 1/v) absurd.
  const vel = disp.map((c) => { const sp = spikes(c.points); return { name: `${c.device}/${c.channel} (${c.unit}${t("per_day")})`, points: velocity(c.points.filter((_, i) => !sp[i]), win) }; });
  // 1/v only where the velocity is movement, not noise (|v| above 2 standard errors, as the
  // detectors judge a slope significant): 1/v of a GNSS point's noise around v = 0 is thousands
  // of meaningless large values that would bury the one line that matters.
  const inv = disp.map((c, i) => ({ name: `${c.device}/${c.channel} (d/${c.unit})`,
    points: vel[i].points.filter((p) => Math.abs(p[1]) > 1e-3 && Math.abs(p[1]) > 2 * p[2]).map((p) => [p[0], 1 / Math.abs(p[1])]) }));
  const markers = [];
  if (w && w.forecast && w.forecast.failure_time) {
    const lastInv = inv.flatMap((s) => s.points.slice(-1)).sort((a, b) => b[0] - a[0])[0];
    const past = w.forecast.failure_time <= Date.now() / 1000;
    markers.push({ t: w.forecast.failure_time, label: past ? t("forecast_past_short") : t("forecast"), from: lastInv, past });
  }
  $("#charts").replaceChildren(
    lineChart(t("displacement"), disp.map((c) => ({ name: `${c.device}/${c.channel} (${c.unit})`, points: c.points })), { id: "displacement" }),
    lineChart(t("velocity"), vel, { id: "velocity" }),
    lineChart(t("inv_velocity"), inv, { id: "inverse_velocity", markers, yMin: 0, fence: true }),
    lineChart(t("rain"), rain.map((c) => ({ name: `${c.device}/${c.channel} (${c.unit})`, points: c.points, colour: "#58a6ff" })), { id: "rain", yMin: 0, spikes: false }));
}

// -- start --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#lang").addEventListener("click", () => { state.lang = state.lang === "zh" ? "en" : "zh"; localStorage.setItem("geowarn.lang", state.lang); applyLang(); if (state.site) drawCharts(state.site, state.siteDoc.card, (state.siteDoc.warnings || [])[0]); });
  $("#logout").addEventListener("click", () => signOut(""));
  $("#login-form").addEventListener("submit", (ev) => { ev.preventDefault(); $("#login-error").textContent = ""; signIn($("#login-token").value.trim()); });
  $("#ack-form").addEventListener("submit", submitAck);
  $("#ack-cancel").addEventListener("click", () => $("#ack-dialog").close());
  window.addEventListener("hashchange", () => { if (state.me) { state.chartsDrawn = false; route(); } });
  // The "time since raised" counters tick every second without asking the server.
  setInterval(() => { for (const e of document.querySelectorAll("[data-since]")) e.textContent = ago(Number(e.dataset.since)); tickForecasts(); }, 1000);
  applyLang();
  if (state.token) signIn(state.token); else $("#login").hidden = false;
});
