//! The matrix as a grid, shared by the Markdown and HTML reports: rows are images (with the cpu
//! and vars axes when they vary), columns are qemu x firmware. Axes with one value that are not
//! in the rows or columns are "fixed" and shown once.

use std::collections::{BTreeMap, HashMap};

use crate::plan::matrix::model::{AXES, MatrixReport};

/// Axes that always make the columns, outer first.
pub const COLUMN_AXES: [&str; 2] = ["qemu", "firmware"];

pub struct Grid {
    /// `image`, then `cpu` and `vars` when they vary.
    pub row_axes: Vec<&'static str>,
    /// Axes with one value that are neither rows nor columns, with that value.
    pub fixed: Vec<(&'static str, String)>,
    /// Row keys: one value per row axis.
    pub rows: Vec<Vec<String>>,
    /// Column keys: (qemu, firmware).
    pub cols: Vec<[String; 2]>,
    /// `cells[row][col]`: index into `report.cells`, or `None` when the plan has no such cell.
    pub cells: Vec<Vec<Option<usize>>>,
}

impl Grid {
    pub fn of(report: &MatrixReport) -> Grid {
        // Each axis's value order: as the plan lists them, then anything else by name.
        let order: HashMap<&str, HashMap<&str, usize>> = report
            .axes
            .iter()
            .map(|a| {
                let m = a
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.as_str(), i))
                    .collect();
                (a.name.as_str(), m)
            })
            .collect();
        let rank = |axis: &str, value: &str| -> (usize, String) {
            let i = order
                .get(axis)
                .and_then(|m| m.get(value).copied())
                .unwrap_or(usize::MAX);
            (i, value.to_string())
        };
        let distinct = |axis: &str| -> Vec<String> {
            let mut vs: Vec<String> = report
                .cells
                .iter()
                .map(|c| c.axes.get(axis).unwrap_or_default().to_string())
                .collect();
            vs.sort_by_key(|v| rank(axis, v));
            vs.dedup();
            vs
        };

        let mut row_axes = vec!["image"];
        let mut fixed = Vec::new();
        for axis in AXES {
            if axis == "image" || COLUMN_AXES.contains(&axis) {
                continue;
            }
            let vs = distinct(axis);
            if vs.len() > 1 {
                row_axes.push(axis);
            } else if let Some(v) = vs.into_iter().next() {
                fixed.push((axis, v));
            }
        }

        let key_rank = |axes: &[&str], key: &[String]| -> Vec<(usize, String)> {
            axes.iter().zip(key).map(|(a, v)| rank(a, v)).collect()
        };
        let mut row_index: BTreeMap<Vec<(usize, String)>, Vec<String>> = BTreeMap::new();
        let mut col_index: BTreeMap<Vec<(usize, String)>, [String; 2]> = BTreeMap::new();
        let mut placed = Vec::new();
        for (i, c) in report.cells.iter().enumerate() {
            let row: Vec<String> = row_axes
                .iter()
                .map(|a| c.axes.get(a).unwrap_or_default().to_string())
                .collect();
            let col = [c.axes.qemu.clone(), c.axes.firmware.clone()];
            let rk = key_rank(&row_axes, &row);
            let ck = key_rank(&COLUMN_AXES, &col);
            row_index.insert(rk.clone(), row);
            col_index.insert(ck.clone(), col);
            placed.push((rk, ck, i));
        }
        let row_pos: HashMap<&Vec<(usize, String)>, usize> =
            row_index.keys().enumerate().map(|(i, k)| (k, i)).collect();
        let col_pos: HashMap<&Vec<(usize, String)>, usize> =
            col_index.keys().enumerate().map(|(i, k)| (k, i)).collect();
        let mut cells = vec![vec![None; col_index.len()]; row_index.len()];
        for (rk, ck, i) in &placed {
            let slot = &mut cells[row_pos[rk]][col_pos[ck]];
            // Two cells differing only in a fixed axis cannot happen (a fixed axis has one
            // value); keep the first in plan order regardless.
            if slot.is_none() {
                *slot = Some(*i);
            }
        }
        Grid {
            row_axes,
            fixed,
            rows: row_index.into_values().collect(),
            cols: col_index.into_values().collect(),
            cells,
        }
    }

    /// The columns grouped by qemu: (qemu value, number of consecutive columns).
    pub fn qemu_groups(&self) -> Vec<(String, usize)> {
        let mut groups: Vec<(String, usize)> = Vec::new();
        for [q, _] in &self.cols {
            match groups.last_mut() {
                Some((g, n)) if g == q => *n += 1,
                _ => groups.push((q.clone(), 1)),
            }
        }
        groups
    }
}
