// SPDX-License-Identifier: MIT
// The Cloud Healthcare API v1 as Google's generated Node client states it: every method (verb,
// path template, required, path and query parameters, request and response types, description)
// and every schema, read from the pinned package's v1.ts with the TypeScript compiler's parser.
// Path parameter patterns are derived from the resource tree and checked against the examples in
// the parameters' descriptions. Used by scripts/gen-api (the Lua table) and scripts/api-oracle
// (the captured requests); a mismatch anywhere throws, so nothing half-right is written.
'use strict';

const fs = require('fs');
const path = require('path');

const MODULES = path.join(__dirname, 'node_modules');
const ts = require(path.join(MODULES, 'typescript'));
const PACKAGE_DIR = path.join(MODULES, '@googleapis', 'healthcare');

// One path segment, as Google's discovery documents write it. The same text is a Lua pattern
// with the same meaning, which the generated table relies on (see check_pattern below).
const SEGMENT = '[^/]+';
// A path parameter that spans segments (the DICOMweb path after `dicomWeb/`).
const FREE_PATH = '^.+$';

// Resource tree nodes that add a fixed segment and no id of their own. The package does not say
// which nodes these are; each is confirmed by the examples in the descriptions (checked below).
//   dicomWeb   the DICOMweb root of a DICOM store: .../dicomStores/{id}/dicomWeb/studies/{uid}
//   services   with nlp, the one NLP service of a location: .../locations/{id}/services/nlp
//   nlp
const FIXED_NODES = new Set(['dicomWeb', 'services', 'nlp']);
// Below `fhir` a FHIR resource is named by type and id: .../fhirStores/{id}/fhir/{type}/{id}.
const FHIR_NODE = 'fhir';

// Path parameters that do not name the resource their method's node in the tree stands for, each
// with the resources it names instead (the description says so; the check below confirms).
const DICOM_STUDY = ['projects', 'locations', 'datasets', 'dicomStores', 'dicomWeb', 'studies'];
const OVERRIDES = {
  // Sits on fhirStores but exports one Group resource: `{+name}/$export`.
  'projects.locations.datasets.fhirStores.bulkExportGroup': {
    name: [{ nodes: ['projects', 'locations', 'datasets', 'fhirStores', 'fhir'], fhir_type: 'Group' }],
  },
};
// Both setBlobStorageSettings methods (same path template) take a study, a series, an instance
// or, with a filter_config in the body, the DICOM store itself.
for (const id of ['projects.locations.datasets.dicomStores.setBlobStorageSettings',
  'projects.locations.datasets.dicomStores.dicomWeb.studies.setBlobStorageSettings']) {
  OVERRIDES[id] = {
    resource: [{ nodes: DICOM_STUDY.slice(0, 4) }, { nodes: DICOM_STUDY }, { nodes: DICOM_STUDY.concat(['series']) },
      { nodes: DICOM_STUDY.concat(['series', 'instances']) }],
  };
}

// The package turns Google's method names into identifiers: "Patient-everything" becomes
// PatientEverything, "search-type" becomes searchType. Google's names are what its reference
// and error messages use, so they are restored: a name starting with a capital is a FHIR
// operation "<Type>-<words>"; the lower-case ones with a hyphen are listed here.
const HYPHENATED = { searchType: 'search-type' };

// TypeScript's `number` is both integer and double in Google's discovery documents, and the
// package does not say which. Every numeric query parameter of this API is a count or a version
// (int32); the list makes a new one fail the generation until someone checks its type.
const INTEGER_QUERY_PARAMS = new Set(['pageSize', '_count', 'options.requestedPolicyVersion']);

function fail(msg) {
  throw new Error('gen-api: ' + msg);
}

function read_package() {
  const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8'));
  const file = path.join(PACKAGE_DIR, 'v1.ts');
  if (!fs.existsSync(file)) fail('the package ships no v1.ts: ' + file);
  const text = fs.readFileSync(file, 'utf8');
  return { name: pkg.name, version: pkg.version, file, text };
}

// The text of a node's JSDoc block without the tags, as the generator wrote it: one paragraph,
// with its own escapes of '}' and '>' undone.
function jsdoc(node) {
  const docs = node.jsDoc || [];
  if (docs.length === 0) return '';
  const raw = docs[docs.length - 1].getText();
  const lines = raw.replace(/^\/\*\*/, '').replace(/\*\/$/, '').split('\n')
    .map(l => l.replace(/^\s*\* ?/, '').replace(/\s+$/, ''));
  const out = [];
  for (const l of lines) {
    if (/^@/.test(l)) break;
    out.push(l);
  }
  return out.join('\n').trim().replace(/\\([}>])/g, '$1');
}

function prop_name(name) {
  if (ts.isIdentifier(name) || ts.isStringLiteral(name)) return name.text;
  fail('unexpected property name ' + name.getText());
}

// A TypeScript type of the package as a table type: string, number, boolean, any, object (ref),
// array (items), map (values).
function type_of(node, where) {
  if (ts.isUnionTypeNode(node)) {
    const rest = node.types.filter(t => !(ts.isLiteralTypeNode(t) && t.literal.kind === ts.SyntaxKind.NullKeyword));
    if (rest.length !== 1) fail(`${where}: union type ${node.getText()}`);
    return type_of(rest[0], where);
  }
  switch (node.kind) {
    case ts.SyntaxKind.StringKeyword: return { type: 'string' };
    case ts.SyntaxKind.NumberKeyword: return { type: 'number' };
    case ts.SyntaxKind.BooleanKeyword: return { type: 'boolean' };
    case ts.SyntaxKind.AnyKeyword: return { type: 'any' };
  }
  if (ts.isParenthesizedTypeNode(node)) return type_of(node.type, where);
  if (ts.isArrayTypeNode(node)) return { type: 'array', items: type_of(node.elementType, where) };
  if (ts.isTypeReferenceNode(node)) {
    const name = node.typeName.getText();
    if (name === 'Array' && node.typeArguments && node.typeArguments.length === 1) {
      return { type: 'array', items: type_of(node.typeArguments[0], where) };
    }
    const m = /^Schema\$(\w+)$/.exec(name);
    if (m) return { type: 'object', ref: m[1] };
  }
  if (ts.isTypeLiteralNode(node) && node.members.length === 1 && ts.isIndexSignatureDeclaration(node.members[0])) {
    const sig = node.members[0];
    if (sig.parameters[0].type.kind !== ts.SyntaxKind.StringKeyword) fail(`${where}: map key ${sig.getText()}`);
    return { type: 'map', values: type_of(sig.type, where) };
  }
  fail(`${where}: unsupported type ${node.getText()}`);
}

// Walks the object literal `const parameters = { options: Object.assign({ url, method }), ... }`
// of a method's implementation.
function request_of(method, where) {
  let found = null;
  const visit = n => {
    if (ts.isVariableDeclaration(n) && n.name.getText() === 'parameters' && n.initializer &&
        ts.isObjectLiteralExpression(n.initializer)) {
      found = n.initializer;
    }
    if (!found) ts.forEachChild(n, visit);
  };
  visit(method.body);
  if (!found) fail(`${where}: no 'parameters' object`);
  const props = {};
  for (const p of found.properties) if (p.name) props[p.name.getText()] = p;
  for (const k of Object.keys(props)) {
    if (!['options', 'params', 'requiredParams', 'pathParams', 'context'].includes(k)) {
      fail(`${where}: unexpected request property '${k}' (media upload?)`);
    }
  }
  const strings = node => {
    const out = [];
    const walk = n => { if (ts.isStringLiteral(n)) out.push(n.text); ts.forEachChild(n, walk); };
    walk(node);
    return out;
  };
  // options: Object.assign({ url: (rootUrl + '/v1/...').replace(...), method: 'GET', apiVersion: '' }, options)
  let url = null, verb = null;
  const walk = n => {
    if (ts.isPropertyAssignment(n)) {
      const k = n.name.getText();
      if (k === 'url') url = strings(n.initializer).find(s => s.startsWith('/'));
      if (k === 'method') verb = n.initializer.text;
    }
    ts.forEachChild(n, walk);
  };
  walk(props.options);
  if (!url || !verb) fail(`${where}: no url or method`);
  const list = name => {
    const init = props[name] && props[name].initializer;
    if (!init || !ts.isArrayLiteralExpression(init)) fail(`${where}: no ${name} list`);
    return init.elements.map(e => e.text);
  };
  let response = null;
  const find_call = n => {
    if (!response && ts.isCallExpression(n) && n.expression.getText() === 'createAPIRequest' && n.typeArguments) {
      response = n.typeArguments[0].getText().replace(/^Schema\$/, '');
    }
    ts.forEachChild(n, find_call);
  };
  find_call(method.body);
  return {
    path: url.replace(/^\//, ''), http_method: verb,
    required: list('requiredParams'), path_params: list('pathParams'), response,
  };
}

function google_method_name(ts_name) {
  if (HYPHENATED[ts_name]) return HYPHENATED[ts_name];
  if (/^[A-Z]/.test(ts_name)) {
    const words = ts_name.match(/[A-Z][a-z0-9]*/g);
    if (words.join('') !== ts_name) fail(`cannot split FHIR operation name ${ts_name}`);
    return [words[0]].concat(words.slice(1).map(w => w.toLowerCase())).join('-');
  }
  return ts_name;
}

// google-apis-rs's name mangling for its generated commands (the seed's healthcare1 CLI):
// camel case to kebab case, '.' to '-'.
function kebab(s) {
  const s1 = s.replace(/(.)([A-Z][a-z]+)/g, '$1_$2');
  return s1.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase().replace(/[_.]/g, '-');
}

// "projects.locations.datasets.dicomStores.studies.storeInstances" ->
// "locations-datasets-dicom-stores-studies-store-instances"
function cli_name(id) {
  return kebab(id.split('.').slice(1).join('.'));
}

// The resource a node of the tree names, as a list of pattern segments.
function instance_segments(nodes, fhir_type, history) {
  const segs = [];
  for (const n of nodes) {
    if (FIXED_NODES.has(n)) segs.push(n);
    else if (n === FHIR_NODE) segs.push(n, fhir_type || SEGMENT, SEGMENT);
    else segs.push(n, SEGMENT);
  }
  if (history) segs.push('_history', SEGMENT);
  return segs;
}

function anchored(segs) {
  return '^' + segs.join('/') + '$';
}

// The pattern of each path parameter of a method, from its place in the path template and the
// method's node in the resource tree.
function derive_patterns(m) {
  const out = {};
  const vars = [];
  const re = /\{(\+?)([^}]+)\}/g;
  let x;
  while ((x = re.exec(m.path)) !== null) vars.push({ reserved: x[1] === '+', name: x[2], at: x.index, end: re.lastIndex });
  vars.forEach((v, i) => {
    let pattern;
    const override = OVERRIDES[m.id] && OVERRIDES[m.id][v.name];
    if (override) {
      pattern = override.map(o => anchored(instance_segments(o.nodes, o.fhir_type)));
    } else if (i > 0) {
      // After the resource: the DICOMweb path spans segments, anything else is one segment
      // (a FHIR resource type).
      pattern = v.name === 'dicomWebPath' ? FREE_PATH : anchored([SEGMENT]);
    } else {
      if (m.path.slice(0, v.at) !== 'v1/' || !v.reserved) fail(`${m.id}: path ${m.path} does not start with v1/{+...}`);
      const rest = m.path.slice(v.end);
      const nodes = m.nodes;
      const last = nodes[nodes.length - 1];
      if (rest.startsWith('/dicomWeb/')) {
        // The DICOMweb methods hang under studies/series/... but name the DICOM store.
        const at = nodes.indexOf('dicomStores');
        if (at < 0) fail(`${m.id}: dicomWeb path outside a DICOM store`);
        pattern = anchored(instance_segments(nodes.slice(0, at + 1)));
      } else if (new RegExp('^/' + last + '($|[/:])').test(rest)) {
        // `{+parent}/dicomStores`, `{+name}/operations`: the owner of the node's collection.
        pattern = anchored(instance_segments(nodes.slice(0, -1)));
      } else if (last === FHIR_NODE) {
        // A FHIR resource; the operations named after a type (Patient-everything, Binary-read)
        // take only that type, the vread ones a version.
        const words = /^[A-Z]/.test(m.ts_name) ? m.ts_name.match(/[A-Z][a-z0-9]*/g) : [];
        const type = words.length && words[0] !== 'Resource' ? words[0] : null;
        pattern = anchored(instance_segments(nodes, type, /vread$/i.test(m.ts_name)));
      } else {
        pattern = anchored(instance_segments(nodes));
      }
    }
    out[v.name] = { patterns: Array.isArray(pattern) ? pattern : [pattern], reserved: v.reserved };
  });
  return out;
}

// A pattern must mean the same as an ECMAScript regex and as a Lua pattern: literal segments of
// letters, digits and '_', '[^/]+' segments, or the free path.
function check_pattern(id, name, pattern) {
  if (pattern === FREE_PATH) return;
  const body = pattern.replace(/^\^/, '').replace(/\$$/, '').split(SEGMENT).join('*');
  if (!/^\^.*\$$/.test(pattern) || !body.split('/').every(s => s === '*' || /^[A-Za-z0-9_]+$/.test(s))) {
    fail(`${id}: pattern ${pattern} of '${name}' is outside the subset Lua and ECMAScript agree on`);
  }
}

// Resource names given as examples in a description ("For example, `projects/{project_id}/...`",
// or in double quotes), with each {placeholder} filled in. Inside quotes white space is dropped:
// one description has "datasets/{dataset_id} /fhirStores/...".
// Some descriptions spell a collection differently from the API's paths; the path is right.
const EXAMPLE_SPELLINGS = { hl7v2Stores: 'hl7V2Stores' };

function examples(description) {
  const out = [];
  const quoted = description.replace(/(`[^`]*`|"[^"]*")/g, q => q.replace(/\s+/g, ''));
  const re = /projects\/[A-Za-z0-9_{}\-.\/$]+/g;
  let x;
  while ((x = re.exec(quoted)) !== null) {
    out.push(x[0].replace(/[./]+$/, '').replace(/\{[^}]*\}/g, 'x1').split('/')
      .map(seg => EXAMPLE_SPELLINGS[seg] || seg).join('/'));
  }
  return out;
}

function load() {
  const pkg = read_package();
  const sf = ts.createSourceFile(pkg.file, pkg.text, ts.ScriptTarget.Latest, true);
  let ns = null;
  sf.forEachChild(n => {
    if (ts.isModuleDeclaration(n) && n.name.text === 'healthcare_v1') ns = n;
  });
  if (!ns) fail('no namespace healthcare_v1 in v1.ts');

  const interfaces = {}, classes = {};
  for (const st of ns.body.statements) {
    if (ts.isInterfaceDeclaration(st)) interfaces[st.name.text] = st;
    if (ts.isClassDeclaration(st)) classes[st.name.text] = st;
  }

  const members = (iface, where) => iface.members.filter(ts.isPropertySignature).map(p => ({
    name: prop_name(p.name), node: p, description: jsdoc(p), where: `${where}.${prop_name(p.name)}`,
  }));

  // Standard parameters, in the package's order (auth is the Node client's, not the API's).
  const standard = members(interfaces.StandardParameters, 'StandardParameters')
    .filter(p => p.name !== 'auth')
    .map(p => ({ name: p.name, type: type_of(p.node.type, p.where).type, description: p.description }));

  // Schemas, by name, fields in declaration order.
  const schemas = {};
  for (const [iname, iface] of Object.entries(interfaces)) {
    const m = /^Schema\$(\w+)$/.exec(iname);
    if (!m) continue;
    schemas[m[1]] = {
      description: jsdoc(iface),
      fields: members(iface, m[1]).map(f => Object.assign({ name: f.name }, type_of(f.node.type, f.where),
        { description: f.description })),
    };
  }
  for (const [name, s] of Object.entries(schemas)) {
    const check = (t, where) => {
      if (t.ref && !schemas[t.ref]) fail(`${name}.${where}: unknown schema ${t.ref}`);
      if (t.items) check(t.items, where);
      if (t.values) check(t.values, where);
    };
    s.fields.forEach(f => check(f, f.name));
  }

  // The resource tree from Healthcare.projects down, and each method of each node.
  const methods = [];
  const walk = (cls_name, nodes) => {
    const cls = classes[cls_name];
    if (!cls) fail('no class ' + cls_name);
    for (const mem of cls.members) {
      if (ts.isPropertyDeclaration(mem) && mem.type && ts.isTypeReferenceNode(mem.type)) {
        const t = mem.type.typeName.getText();
        if (t.startsWith('Resource$')) walk(t, nodes.concat([prop_name(mem.name)]));
      }
    }
    const overloads = {};
    for (const mem of cls.members) {
      if (!ts.isMethodDeclaration(mem)) continue;
      const name = prop_name(mem.name);
      (overloads[name] = overloads[name] || []).push(mem);
    }
    for (const [ts_name, decls] of Object.entries(overloads)) {
      const impl = decls.find(d => d.body);
      if (!impl) fail(`${cls_name}.${ts_name}: no implementation`);
      const id = nodes.concat([google_method_name(ts_name)]).join('.');
      const req = request_of(impl, id);
      // The Params interface named in the implementation's first parameter.
      let params_type = null;
      const find = n => {
        if (!params_type && ts.isTypeReferenceNode(n) && /^Params\$/.test(n.typeName.getText())) {
          params_type = n.typeName.getText();
        }
        ts.forEachChild(n, find);
      };
      find(impl.parameters[0]);
      if (!params_type || !interfaces[params_type]) fail(`${id}: no Params interface`);
      const params = members(interfaces[params_type], id);
      const body = params.find(p => p.name === 'requestBody');
      const request = body ? type_of(body.node.type, body.where).ref : null;
      if (body && !request) fail(`${id}: request body is not a schema`);
      const m = Object.assign({
        id, ts_name, nodes, cli: cli_name(id), description: jsdoc(decls[0]),
        request, http_body: request === 'HttpBody',
      }, req);
      m.response = m.response === 'Readable' ? null : m.response;
      const by_name = {};
      for (const p of params) if (p.name !== 'requestBody') by_name[p.name] = p;
      for (const r of m.required) if (!by_name[r]) fail(`${id}: required '${r}' is not a parameter`);
      // Path parameters: in template order, each with its pattern.
      const derived = derive_patterns(m);
      const in_template = Object.keys(derived);
      if (in_template.slice().sort().join() !== m.path_params.slice().sort().join()) {
        fail(`${id}: pathParams ${m.path_params} differ from the template ${m.path}`);
      }
      m.path_params = in_template.map(name => {
        const p = by_name[name];
        if (!p) fail(`${id}: path parameter '${name}' is not a parameter`);
        if (type_of(p.node.type, p.where).type !== 'string') fail(`${id}: path parameter '${name}' is not a string`);
        const d = derived[name];
        d.patterns.forEach(pt => check_pattern(id, name, pt));
        const res = d.patterns.map(pt => new RegExp(pt));
        const ex = d.patterns[0] === FREE_PATH ? [] : examples(p.description);
        for (const e of ex) {
          if (!res.some(re => re.test(e))) {
            fail(`${id}: '${name}' pattern ${d.patterns.join(' or ')} does not match the description's example ${e}`);
          }
        }
        // Each pattern is some example's (when there are examples): none is left unchecked.
        for (let i = 0; i < res.length && ex.length > 0; i++) {
          if (!ex.some(e => res[i].test(e))) fail(`${id}: '${name}' pattern ${d.patterns[i]} matches no example`);
        }
        return { name, patterns: d.patterns, reserved: d.reserved, description: p.description, checked: ex.length > 0 };
      });
      // Query parameters: the rest, in the package's order.
      m.query = params.filter(p => p.name !== 'requestBody' && !derived[p.name]).map(p => {
        const t = type_of(p.node.type, p.where);
        let type;
        if (t.type === 'string') type = 'string';
        else if (t.type === 'boolean') type = 'boolean';
        else if (t.type === 'array' && t.items.type === 'string') type = 'repeated';
        else if (t.type === 'number') {
          if (!INTEGER_QUERY_PARAMS.has(p.name)) {
            fail(`${id}: numeric query parameter '${p.name}': integer or double? Check Google's reference and add it to INTEGER_QUERY_PARAMS`);
          }
          type = 'integer';
        } else fail(`${id}: query parameter '${p.name}' of type ${JSON.stringify(t)}`);
        return { name: p.name, type, description: p.description };
      });
      for (const r of m.required) {
        if (!derived[r]) fail(`${id}: required parameter '${r}' is a query parameter; the table cannot say so yet`);
      }
      if (m.request && !schemas[m.request]) fail(`${id}: unknown request schema ${m.request}`);
      if (m.response && !schemas[m.response]) fail(`${id}: unknown response schema ${m.response}`);
      methods.push(m);
    }
  };
  walk('Resource$Projects', ['projects']);
  methods.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const seen = {};
  for (const m of methods) {
    if (seen[m.id]) fail('duplicate method id ' + m.id);
    if (seen['cli:' + m.cli]) fail('duplicate command name ' + m.cli);
    seen[m.id] = seen['cli:' + m.cli] = true;
  }
  return {
    package: pkg.name, version: pkg.version,
    typescript: ts.version,
    root_url: 'https://healthcare.googleapis.com/',
    standard, methods, schemas,
  };
}

module.exports = { load, kebab, cli_name, examples, FREE_PATH, SEGMENT };
