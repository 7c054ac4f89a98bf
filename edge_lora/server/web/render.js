// Model output as DOM nodes, never as HTML: paragraphs, fenced code blocks, inline code, bold and
// italics (a small subset of Markdown). Every piece of text goes in through textContent, so a
// <script> or an onerror attribute in an answer is shown, not run.

export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    const fence = lines[i].match(/^```\s*([\w+-]*)\s*$/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !/^```\s*$/.test(lines[i])) body.push(lines[i++]);
      i += 1;  // the closing fence (or the end: an answer still streaming)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[1]) code.dataset.lang = fence[1];
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() !== "" && !/^```/.test(lines[i])) para.push(lines[i++]);
    if (para.length) {
      const p = document.createElement("p");
      para.forEach((line, k) => {
        if (k) p.append(document.createElement("br"));
        inline(line, p);
      });
      out.append(p);
    } else {
      i += 1;
    }
  }
  return out;
}

const INLINE = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/;

function inline(line, parent) {
  for (const part of line.split(INLINE)) {
    if (!part) continue;
    let node;
    if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
      node = document.createElement("code");
      node.textContent = part.slice(1, -1);
    } else if (part.startsWith("**") && part.endsWith("**") && part.length > 4) {
      node = document.createElement("strong");
      node.textContent = part.slice(2, -2);
    } else if (part.startsWith("*") && part.endsWith("*") && part.length > 2) {
      node = document.createElement("em");
      node.textContent = part.slice(1, -1);
    } else {
      node = document.createTextNode(part);
    }
    parent.append(node);
  }
}

// A JSON value checked against the JSON-schema keywords structured outputs use (type, properties,
// required, additionalProperties, items, enum, const, minimum/maximum, minLength/maxLength,
// minItems/maxItems, anyOf/oneOf, $ref to $defs): the list of problems, empty when it holds.
export function schemaProblems(value, schema, root = schema, path = "$") {
  const problems = [];
  if (schema === true || schema === undefined) return problems;
  if (schema === false) return [`${path}: no value is allowed here`];
  if (schema.$ref) {
    const target = schema.$ref.replace(/^#\//, "").split("/").reduce((o, k) => (o ? o[k] : undefined), root);
    return target ? schemaProblems(value, target, root, path) : [`${path}: unresolved $ref ${schema.$ref}`];
  }
  for (const key of ["anyOf", "oneOf"]) {
    if (schema[key]) {
      const ok = schema[key].filter((s) => schemaProblems(value, s, root, path).length === 0).length;
      if (key === "anyOf" ? ok === 0 : ok !== 1) problems.push(`${path}: matches ${ok} of the ${key} choices`);
    }
  }
  if ("const" in schema && JSON.stringify(value) !== JSON.stringify(schema.const)) problems.push(`${path}: is not the const`);
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
    problems.push(`${path}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  }
  const types = schema.type === undefined ? null : [].concat(schema.type);
  const kind = value === null ? "null" : Array.isArray(value) ? "array" : typeof value === "number"
    ? (Number.isInteger(value) ? "integer" : "number") : typeof value;
  if (types && !types.some((t) => t === kind || (t === "number" && kind === "integer"))) {
    problems.push(`${path}: is ${kind}, not ${types.join(" or ")}`);
    return problems;
  }
  if (kind === "object") {
    for (const r of schema.required || []) if (!(r in value)) problems.push(`${path}: misses "${r}"`);
    const props = schema.properties || {};
    for (const [k, v] of Object.entries(value)) {
      if (k in props) problems.push(...schemaProblems(v, props[k], root, `${path}.${k}`));
      else if (schema.additionalProperties === false) problems.push(`${path}: "${k}" is not allowed`);
      else if (typeof schema.additionalProperties === "object") {
        problems.push(...schemaProblems(v, schema.additionalProperties, root, `${path}.${k}`));
      }
    }
  } else if (kind === "array") {
    if (schema.minItems !== undefined && value.length < schema.minItems) problems.push(`${path}: fewer than ${schema.minItems} items`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems) problems.push(`${path}: more than ${schema.maxItems} items`);
    if (schema.items) value.forEach((v, k) => problems.push(...schemaProblems(v, schema.items, root, `${path}[${k}]`)));
  } else if (kind === "string") {
    if (schema.minLength !== undefined && [...value].length < schema.minLength) problems.push(`${path}: shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && [...value].length > schema.maxLength) problems.push(`${path}: longer than ${schema.maxLength}`);
  } else if (kind === "number" || kind === "integer") {
    if (schema.minimum !== undefined && value < schema.minimum) problems.push(`${path}: below ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) problems.push(`${path}: above ${schema.maximum}`);
  }
  return problems;
}
