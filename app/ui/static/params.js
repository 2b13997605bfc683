// What a hash route may carry into an API path: ids are checked before any fetch, so a crafted hash such as
// #/datasets/..%2Fjobs%2F<id> (decoded: "../jobs/<id>") cannot make a page request another resource.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/; // MODEL_NAME_PATTERN of app/schemas.py

export const isUuid = (s) => typeof s === "string" && UUID.test(s);
export const isModelName = (s) => typeof s === "string" && MODEL_NAME.test(s);

/**
 * Decode a route's captured segments and check each with its test (checks[i]); null when one is not valid
 * percent-encoding (decodeURIComponent throws on "%E0") or fails its test: the router then shows "no page".
 */
export function routeParams(captured, checks) {
  const params = [];
  for (const [i, raw] of captured.entries()) {
    let value;
    try {
      value = decodeURIComponent(raw);
    } catch {
      return null;
    }
    if (!checks[i] || !checks[i](value)) return null;
    params.push(value);
  }
  return params;
}
