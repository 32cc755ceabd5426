// The chair's speaking-timer controls (conference/speaking.py): the room's limit for every grant,
// what happens when it is up, the running timer and "one more minute".

import { mountFloorTimer } from "./floor-timer.js";

const $ = (id) => document.getElementById(id);

/** Wire the floor panel's timer controls; `command(type, fields)` sends a chair command. */
export function mountChairTimer(client, command) {
  const render = mountFloorTimer($("chair-floor-timer"), client);
  const limit = $("floor-limit");
  const action = $("floor-action");
  const send = () =>
    command("set_floor_limits", {
      default_s: Number(limit.value) > 0 ? Number(limit.value) : null,
      action: action.value,
      grace_s: 10,
    });
  limit.addEventListener("change", send);
  action.addEventListener("change", send);
  $("floor-extend").addEventListener("click", () => command("extend_floor", { by_s: 60 }));
  const sync = () => {
    const limits = client.mirror?.floorLimits;
    if (limits && document.activeElement !== limit) limit.value = String(limits.default_s ?? 0);
    if (limits && document.activeElement !== action) action.value = limits.action;
    $("floor-extend").disabled = !client.mirror?.floor;
    render();
  };
  client.addEventListener("room", sync);
  client.addEventListener("joined", sync);
  sync();
}
