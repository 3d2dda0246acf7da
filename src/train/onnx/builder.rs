//! A small ONNX graph builder: named nodes with generated output names, typed initializers,
//! and attribute helpers.

use super::proto::*;

pub(crate) const MS: &str = "com.microsoft";

#[derive(Default)]
pub(crate) struct GraphBuilder {
    pub(crate) nodes: Vec<NodeProto>,
    pub(crate) initializers: Vec<TensorProto>,
    pub(crate) inputs: Vec<ValueInfoProto>,
    pub(crate) outputs: Vec<ValueInfoProto>,
    counter: usize,
}

pub(crate) fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: v,
        r#type: attr_type::INT,
        ..Default::default()
    }
}
pub(crate) fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: v,
        r#type: attr_type::FLOAT,
        ..Default::default()
    }
}
pub(crate) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: attr_type::INTS,
        ..Default::default()
    }
}

fn dims_proto(dims: &[&str]) -> TensorShapeProto {
    TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d.parse::<i64>() {
                    Ok(n) => DimValue::DimValue(n),
                    Err(_) => DimValue::DimParam(d.to_string()),
                }),
            })
            .collect(),
    }
}

pub(crate) fn value_info(name: &str, elem_type: i32, dims: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(dims_proto(dims)),
            }),
        }),
    }
}

impl GraphBuilder {
    pub(crate) fn input(&mut self, name: &str, elem_type: i32, dims: &[&str]) -> String {
        self.inputs.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    pub(crate) fn output(&mut self, name: &str, elem_type: i32, dims: &[&str]) {
        self.outputs.push(value_info(name, elem_type, dims));
    }

    /// Adds a node with `n_out` generated outputs (named after `tag`) and returns their names.
    pub(crate) fn node_n(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
        tag: &str,
    ) -> Vec<String> {
        self.counter += 1;
        let name = format!("{tag}/{op}_{}", self.counter);
        let outputs: Vec<String> = (0..n_out).map(|k| format!("{name}:{k}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name,
            op_type: op.into(),
            attribute: attrs,
            domain: domain.into(),
            ..Default::default()
        });
        outputs
    }

    pub(crate) fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        tag: &str,
    ) -> String {
        self.node_n(op, "", inputs, 1, attrs, tag).remove(0)
    }

    pub(crate) fn ms_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        tag: &str,
    ) -> String {
        self.node_n(op, MS, inputs, 1, attrs, tag).remove(0)
    }

    /// Renames the last node's first output (used for graph outputs).
    pub(crate) fn rename_last_output(&mut self, to: &str) {
        let n = self.nodes.last_mut().expect("a node");
        n.output[0] = to.to_string();
    }

    fn init(&mut self, name: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.into(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    pub(crate) fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "initializer {name}"
        );
        self.init(
            name,
            data_type::FLOAT,
            dims,
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }
    pub(crate) fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        self.init(
            name,
            data_type::INT64,
            dims,
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }
    pub(crate) fn init_i8(&mut self, name: &str, dims: &[usize], data: &[i8]) -> String {
        self.init(
            name,
            data_type::INT8,
            dims,
            data.iter().map(|&x| x as u8).collect(),
        )
    }
    pub(crate) fn init_u8(&mut self, name: &str, dims: &[usize], data: &[u8]) -> String {
        self.init(name, data_type::UINT8, dims, data.to_vec())
    }
}
